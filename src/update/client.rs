//! `ztms update --vm`: sends a bundle to a VM's virtio-serial status port
//! and follows the replies until the final one.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::protocol::{UpdateReply, UpdateRequest, UpdateState};

/// Time allowed between two reply lines. Writing a root slot under TCG
/// takes tens of seconds, and the bundle is read three times.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(600);

/// Connects to the status port socket `port` (the `status.sock` in a VM's
/// state directory).
pub fn connect(port: &Path) -> Result<UnixStream, String> {
    let stream = UnixStream::connect(port)
        .map_err(|e| format!("cannot connect to the status port {}: {e}; is the VM running?", port.display()))?;
    stream
        .set_read_timeout(Some(REPLY_TIMEOUT))
        .map_err(|e| format!("cannot set a timeout on {}: {e}", port.display()))?;
    Ok(stream)
}

/// Sends the bundle at `bundle` over the status port socket `port` and
/// returns the final reply. `progress` receives every reply before it.
pub fn send(port: &Path, bundle: &Path, allow_downgrade: bool, reboot: bool, progress: &mut dyn FnMut(&UpdateReply)) -> Result<UpdateReply, String> {
    let size = std::fs::metadata(bundle)
        .map_err(|e| format!("cannot read bundle {}: {e}", bundle.display()))?
        .len();
    let mut input = std::fs::File::open(bundle).map_err(|e| format!("cannot open bundle {}: {e}", bundle.display()))?;
    let request = UpdateRequest { size, allow_downgrade, reboot };
    send_on(connect(port)?, &mut input, request, progress)
}

/// Sends `request` and `request.size` bytes from `input` on `stream`, and
/// returns the final reply. A test that cuts the power shuts a clone of
/// `stream` down to end this call.
pub fn send_on(mut stream: UnixStream, input: &mut dyn Read, request: UpdateRequest, progress: &mut dyn FnMut(&UpdateReply)) -> Result<UpdateReply, String> {
    stream
        .write_all(request.line().as_bytes())
        .map_err(|e| format!("sending the update request failed: {e}"))?;
    let copied = std::io::copy(&mut input.take(request.size), &mut stream).map_err(|e| format!("sending the bundle failed: {e}"))?;
    if copied != request.size {
        return Err(format!("the bundle ended after {copied} of {} bytes", request.size));
    }

    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        let count = reader.read_line(&mut line).map_err(|e| format!("reading the update reply failed: {e}"))?;
        if count == 0 {
            return Err("the status port closed before the update finished".into());
        }
        // The port may still carry replies to earlier status requests;
        // only update replies count here.
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
