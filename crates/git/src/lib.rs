//! Git and SSH for checkouts, below the job core: what a checkout needs to reach a repository
//! ([`ssh`]: keys, known_hosts with Bitbucket's pinned host keys, host aliases and mappings,
//! keyscan, the `~/.ssh` files a container gets), the checkout itself with submodules
//! ([`checkout`], git2), the mirror cache it fetches into ([`mirror`]), and the public keys
//! allowed to SSH into a job ([`keys`]). Nothing here starts a container; the coordinator
//! uses it to read a config at a commit, the job core to check out.

pub mod checkout;
pub mod keys;
pub mod mirror;
pub mod ssh;
