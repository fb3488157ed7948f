//! Bitbucket's REST API for what an operator used to do by hand in Bitbucket's settings:
//! following a repository (a deploy key and a webhook, [`follow`]) and user keys on an
//! account. [`credentials`] is how Bosun signs in (also for commit statuses), [`client`] the
//! HTTP calls (paging, 429s, errors naming the call), [`repo`] the calls in Cloud's and Data
//! Center's shapes; [`follow`] the plan (pure) and carrying it out with undo.

pub mod client;
pub mod credentials;
pub mod follow;
pub mod repo;

pub use client::{Client, RestError};
pub use credentials::Credentials;
pub use repo::{Remote, Repository};
