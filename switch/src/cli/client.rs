//! A blocking client for the control socket, used by the CLI and the lab.

#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::control::proto::{ApiError, Request, Response};

/// Why a request did not get an answer from the daemon, or got an error.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the tapyard daemon at {path} (start it with `tapyard daemon`; as root it listens on /run/tapyard/tapyard.sock; or point to it with --socket or TAPYARD_SOCKET)")]
    Connect { path: PathBuf, source: std::io::Error },
    #[error("lost the connection to the daemon at {path}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("the daemon sent a reply this CLI cannot read: {0}")]
    Protocol(String),
    #[error("{0}")]
    Api(ApiError),
}

pub struct Client {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        let s =
            UnixStream::connect(path).map_err(|source| ClientError::Connect { path: path.to_path_buf(), source })?;
        // Connecting and moving links take milliseconds; a minute means the daemon is stuck.
        let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
        let writer = s.try_clone().map_err(|source| ClientError::Io { path: path.to_path_buf(), source })?;
        Ok(Client { path: path.to_path_buf(), reader: BufReader::new(s), writer })
    }

    /// Sends `req` and returns the raw result value.
    pub fn call_value(&mut self, req: &Request) -> Result<serde_json::Value, ClientError> {
        let io = |source| ClientError::Io { path: self.path.clone(), source };
        let mut line = serde_json::to_vec(req).map_err(|e| ClientError::Protocol(e.to_string()))?;
        line.push(b'\n');
        let sent = self.writer.write_all(&line);
        let mut resp = String::new();
        let read = self.reader.read_line(&mut resp);
        // A daemon that refuses a connection (forbidden, busy) answers at
        // once and closes, so the request may not get through: its answer
        // says more than the broken pipe does.
        let n = match (sent, read) {
            (_, Ok(n)) if n > 0 => n,
            (Err(e), _) => return Err(io(e)),
            (Ok(()), r) => r.map_err(|source| ClientError::Io { path: self.path.clone(), source })?,
        };
        if n == 0 {
            return Err(ClientError::Protocol("the daemon closed the connection without replying".into()));
        }
        let r: Response = serde_json::from_str(&resp).map_err(|e| ClientError::Protocol(e.to_string()))?;
        match (r.ok, r.result, r.error) {
            (true, Some(v), _) => Ok(v),
            (true, None, _) => Ok(serde_json::Value::Null),
            (false, _, Some(e)) => Err(ClientError::Api(e)),
            (false, _, None) => Err(ClientError::Protocol("error reply without an error".into())),
        }
    }

    /// The connection's two halves, for a request that turns it into a
    /// stream (`capture`, docs/PROTOCOL.md): the reader keeps what it has
    /// already read past the reply.
    pub fn into_stream(self) -> (BufReader<UnixStream>, UnixStream) {
        (self.reader, self.writer)
    }

    pub fn call<T: DeserializeOwned>(&mut self, req: &Request) -> Result<T, ClientError> {
        let v = self.call_value(req)?;
        serde_json::from_value(v).map_err(|e| ClientError::Protocol(e.to_string()))
    }
}

/// One request on a fresh connection.
pub fn call<T: DeserializeOwned>(socket: &Path, req: &Request) -> Result<T, ClientError> {
    Client::connect(socket)?.call(req)
}
