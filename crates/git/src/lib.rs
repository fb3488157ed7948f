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

/// Tests that start processes hold this for reading while they do; a test that needs its own
/// released mirror locks to be free holds it for writing. A child inherits every descriptor
/// of the process until it execs (close-on-exec acts only then), a held `flock`'s too, and
/// `Command::spawn` returns only once the child has exec'd: with the write half held, no such
/// child is left holding a copy.
#[cfg(test)]
pub(crate) fn spawning() -> std::sync::RwLockReadGuard<'static, ()> {
    SPAWNING
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// See [`spawning`].
#[cfg(test)]
pub(crate) fn no_spawning() -> std::sync::RwLockWriteGuard<'static, ()> {
    SPAWNING
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
static SPAWNING: std::sync::RwLock<()> = std::sync::RwLock::new(());
