//! Replays the committed fuzz seed corpus of the gateway's targets on stable Rust.
//!
//! Every file under `fuzz/corpus/h1_response/` is fed to the harness the cargo-fuzz
//! target of that name calls, so a seed (or a crash input copied into the corpus after
//! a fix) is also a plain regression test. Nothing outside the repository is read.

use std::fs;
use std::panic;
use std::path::Path;

#[test]
#[allow(
    clippy::disallowed_methods,
    reason = "the test reads the corpus files; the library itself does no such file I/O"
)]
fn h1_response_corpus() {
    let dir = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fuzz/corpus/h1_response"
    ));
    let mut files: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read fuzz corpus {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "fuzz corpus {} has no inputs",
        dir.display()
    );
    let panicked: Vec<String> = files
        .iter()
        .filter(|path| {
            let data = fs::read(path).unwrap();
            panic::catch_unwind(|| dpop_gateway::internal::fuzzing::h1_response(&data)).is_err()
        })
        .map(|path| path.display().to_string())
        .collect();
    assert!(
        panicked.is_empty(),
        "{} of {} corpus inputs panicked:\n  {}",
        panicked.len(),
        files.len(),
        panicked.join("\n  ")
    );
}
