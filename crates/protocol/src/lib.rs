//! What agent and coordinator share: the wire between them, the clone URLs both read, the
//! ids both derive, times as both sides show them, and what must stay private (secret
//! values, owner-only files, private directories). It depends on no other member of the
//! workspace, so a coordinator (this one or another) needs only this crate to speak to agents.
//!
//! Every type that crosses the wire between agent and coordinator (protocol v1, HTTP/JSON) is at
//! the crate root; `docs/protocol.md` describes it for other coordinators.
//!
//! Endpoints (all under [`API_PREFIX`]; every call but `register` carries
//! `Authorization: Bearer <agent token>`):
//!
//! | method, path | body → answer |
//! |---|---|
//! | `POST /agents/register` | [`RegisterRequest`] → 201 [`RegisterResponse`] |
//! | `POST /jobs/claim?wait=SECONDS` | [`ClaimRequest`] → 200 [`ClaimResponse`] / 204 nothing queued |
//! | `POST /agents/heartbeat` | [`Heartbeat`] → 200 [`HeartbeatResponse`] |
//! | `POST /agents/control?wait=SECONDS` | [`ControlRequest`] → 200 [`ControlResponse`] / 204 nothing new |
//! | `POST /jobs/{id}/log?offset=N` | raw bytes → 200 [`LogAck`] / 409 [`LogAck`] (gap: resend from `offset`) |
//! | `POST /jobs/{id}/events` | [`EventBatch`] → 200 [`EventAck`] / 409 [`EventAck`] (gap) |
//! | `POST /jobs/{id}/finish` | [`FinishRequest`] → 200 / 409 [`LogAck`] (log incomplete) |
//!
//! Version 2 adds the store over the protocol (`WireJob::store`, the blob, workspace, cache,
//! artifact and test result endpoints: see [`WireStore`] and `docs/protocol.md`).
//!
//! Errors are JSON [`ApiError`]; 401 means the token is unknown or revoked (the agent stops).

pub mod clone_url;
pub mod identity;
pub mod private;
pub mod time;
mod wire;

pub use wire::*;
