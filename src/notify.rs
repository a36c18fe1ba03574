//! systemd's notification protocol (sd_notify) with std only: `READY=1` once serving,
//! `WATCHDOG=1` after every self-probe that does not find the server deaf, `STOPPING=1` on
//! shutdown. Without
//! `$NOTIFY_SOCKET` (not under systemd, or not `Type=notify`) every call does nothing.

use std::os::unix::net::UnixDatagram;

pub struct Notifier {
    socket: Option<(UnixDatagram, String)>,
}

impl Notifier {
    pub fn from_env() -> Notifier {
        let socket = std::env::var("NOTIFY_SOCKET")
            .ok()
            .filter(|path| !path.is_empty())
            .and_then(|path| UnixDatagram::unbound().ok().map(|s| (s, path)));
        Notifier { socket }
    }

    /// Sends one state line. Failure is ignored on purpose: if systemd cannot be told we are
    /// alive, its watchdog restarts us, which is the right outcome anyway.
    pub fn send(&self, state: &str) {
        let Some((socket, path)) = &self.socket else {
            return;
        };
        if let Some(name) = path.strip_prefix('@') {
            // An abstract socket: systemd's default for user managers and some containers.
            use std::os::linux::net::SocketAddrExt;
            if let Ok(addr) = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()) {
                let _ = socket.send_to_addr(state.as_bytes(), &addr);
            }
        } else {
            let _ = socket.send_to(state.as_bytes(), path);
        }
    }
}
