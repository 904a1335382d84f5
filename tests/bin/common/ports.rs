//! Loopback ports for the processes and servers a test starts (shared by the process tests
//! and the `trike-tests` crate).

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::sync::Mutex;

/// A loopback port that is free now and was not handed out before in this process. The
/// kernel may give the same ephemeral port to two binds in a row once the first socket is
/// closed, and two children told the same port fail at start (the fleet test met it).
pub fn free_port() -> u16 {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a loopback port")
            .port();
        if GIVEN.lock().unwrap_or_else(|e| e.into_inner()).insert(port) {
            return port;
        }
    }
}

#[cfg(test)]
mod tests {
    /// Guarantees: ports handed out in one process are all different.
    #[test]
    fn ports_are_never_handed_out_twice() {
        let ports: std::collections::BTreeSet<u16> = (0..500).map(|_| super::free_port()).collect();
        assert_eq!(ports.len(), 500);
    }
}
