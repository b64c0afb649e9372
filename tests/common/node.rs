//! Node.js drivers (socket.io-client, playwright-core) over stdin/stdout.

use std::path::Path;
use std::process::Stdio;

/// Starts a Node.js driver script (relative to the crate root) that takes
/// JSON commands on stdin and answers JSON lines on stdout; killed on drop.
pub fn spawn_node_driver(
    script: &str,
) -> (
    tokio::process::Child,
    tokio::process::ChildStdin,
    tokio::process::ChildStdout,
) {
    let mut child = tokio::process::Command::new("node")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join(script))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("node is installed (scripts/test installs it)");
    let stdin = child.stdin.take().expect("stdin");
    let stdout = child.stdout.take().expect("stdout");
    (child, stdin, stdout)
}
