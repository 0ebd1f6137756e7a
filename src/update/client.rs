//! `ztms update --vm`: sends a bundle to a VM's virtio-serial status port
//! and follows the replies until the final one.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::protocol::{UpdateReply, UpdateRequest, UpdateState};

/// Time allowed between two reply lines. Writing a root slot under TCG
/// takes tens of seconds, and the bundle is checked twice.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(600);

/// Sends the bundle at `bundle` over the status port socket `port` (the
/// `status.sock` in a VM's state directory) and returns the final reply.
/// `progress` receives every reply before the final one.
pub fn send(port: &Path, bundle: &Path, allow_downgrade: bool, reboot: bool, progress: &mut dyn FnMut(&UpdateReply)) -> Result<UpdateReply, String> {
    let size = std::fs::metadata(bundle)
        .map_err(|e| format!("cannot read bundle {}: {e}", bundle.display()))?
        .len();
    send_with(port, &mut std::fs::File::open(bundle).map_err(|e| format!("cannot open bundle {}: {e}", bundle.display()))?, size, UpdateRequest { size, allow_downgrade, reboot }, progress)
}

/// Sends `request` and then `size` bytes from `input`; tests pass a request
/// whose size differs from the bytes sent, or stop early.
pub fn send_with(port: &Path, input: &mut dyn Read, size: u64, request: UpdateRequest, progress: &mut dyn FnMut(&UpdateReply)) -> Result<UpdateReply, String> {
    let mut stream = UnixStream::connect(port)
        .map_err(|e| format!("cannot connect to the status port {}: {e}; is the VM running?", port.display()))?;
    stream
        .set_read_timeout(Some(REPLY_TIMEOUT))
        .map_err(|e| format!("cannot set a timeout on {}: {e}", port.display()))?;
    stream
        .write_all(request.line().as_bytes())
        .map_err(|e| format!("sending the update request failed: {e}"))?;
    let copied = std::io::copy(&mut input.take(size), &mut stream).map_err(|e| format!("sending the bundle failed: {e}"))?;
    if copied != size {
        return Err(format!("the bundle ended after {copied} of {size} bytes"));
    }

    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        let count = reader.read_line(&mut line).map_err(|e| format!("reading the update reply failed: {e}"))?;
        if count == 0 {
            return Err("the status port closed before the update finished".into());
        }
        // The port also carries replies to status requests of earlier
        // clients; only update replies count here.
        let Ok(reply) = serde_json::from_str::<UpdateReply>(&line) else {
            continue;
        };
        if reply.update == UpdateState::Progress {
            progress(&reply);
            continue;
        }
        return Ok(reply);
    }
}
