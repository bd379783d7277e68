//! What `warden run` and the gateway say to each other over the gateway's local socket: one
//! JSON object per line, at most [`MAX_LINE`] bytes. The socket is the gateway's and only root
//! (or the gateway's own user) may use it; the instance lives as long as the connection.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Where a gateway serves `warden run` unless configured otherwise.
pub const DEFAULT_SOCKET: &str = "/run/warden/sandbox.sock";

/// The longest line either side accepts.
pub const MAX_LINE: usize = 64 * 1024;

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum Request {
    /// Confine the processes of `cgroup` as the agent instance `grant` is for. The gateway
    /// holds the grant and acts with it; the agent never sees it.
    Confine { cgroup: PathBuf, grant: String },
    /// A fresh grant for the same instance, before the old one expires.
    Renew { grant: String },
    /// The agent has exited: the gateway answers [`Reply::Finished`] once it has sent every
    /// refusal decided before it heard this.
    Finish,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum Reply {
    /// The programs are attached: the agent's connections go to `listener`.
    Confined {
        agent: String,
        listener: String,
    },
    Renewed,
    Refused {
        error: String,
    },
    /// Something the agent tried was refused: the decision as the audit log records it. Sent
    /// whenever it happens, so `warden run` can say why a connection failed.
    Denied {
        decision: serde_json::Value,
    },
    /// Every refusal before [`Request::Finish`] has been sent.
    Finished,
}
