//! `bge embed` and `bge rerank` stream: an answer comes back while the producer keeps stdin
//! open, and memory stays bounded however many lines go through.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::model_dir;
use serde_json::Value;

fn spawn(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_bge"))
        .args(args)
        .arg("--quiet")
        .env("HF_HUB_OFFLINE", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run bge")
}

/// stdout's lines as they arrive.
fn lines(stdout: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    rx
}

/// Writes `input` and expects one output line back while stdin stays open.
fn answered_while_open(child: &mut Child, rx: &mpsc::Receiver<String>, input: &str) -> Value {
    let stdin = child.stdin.as_mut().unwrap();
    stdin.write_all(input.as_bytes()).unwrap();
    stdin.flush().unwrap();
    let line = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("an output line while stdin is still open");
    serde_json::from_str(&line).unwrap()
}

#[test]
fn answers_come_while_stdin_is_held_open() {
    let tiny_bge = model_dir("tiny-bge");
    let tiny_m3 = model_dir("tiny-m3");
    let tiny_reranker = model_dir("tiny-reranker");
    let runs = [
        (
            ["embed", "--model", tiny_bge.to_str().unwrap()],
            ["\"a first text\"\n", "{\"text\": \"a second one\"}\n"],
            "dense",
        ),
        (
            ["rerank", "--model", tiny_reranker.to_str().unwrap()],
            [
                "{\"query\": \"q\", \"passage\": \"p\"}\n",
                "{\"query\": \"q2\", \"passage\": \"p2\"}\n",
            ],
            "score",
        ),
        (
            ["score", "--model", tiny_m3.to_str().unwrap()],
            [
                "{\"query\": \"q\", \"passage\": \"p\"}\n",
                "{\"query\": \"q2\", \"passage\": \"p2\"}\n",
            ],
            "colbert+sparse+dense",
        ),
    ];
    for (args, inputs, field) in runs {
        let mut child = spawn(&args);
        let rx = lines(child.stdout.take().unwrap());
        for input in inputs {
            let v = answered_while_open(&mut child, &rx, input);
            assert!(!v[field].is_null(), "{args:?}: {v}");
        }
        drop(child.stdin.take());
        let status = child.wait().unwrap();
        assert!(status.success(), "{args:?}");
        assert!(rx.recv().is_err(), "{args:?}: no line beyond the inputs'");
    }
}

/// The text of each line, after its number: 91 bytes, so that holding every line at once (as
/// bge did before it streamed) shows: 25 MB more for 200,000 lines than for 20,000.
const LINE: &str =
    "the giant panda is a bear native to south central china, known for its black and white coat";

/// Runs `bge embed` on a file of `n` short lines and returns the number of output lines and
/// the process's peak resident memory in bytes. (A file rather than a pipe: how a pipe's lines
/// arrive moves the peak by a few MB from run to run.)
#[cfg(target_os = "linux")]
#[allow(clippy::zombie_processes)] // reaped by `wait_with_peak_rss`
fn embed_lines(n: usize) -> (usize, u64) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("lines.jsonl");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&input).unwrap());
    for i in 0..n {
        writeln!(file, "\"line {i}: {LINE}\"").unwrap();
    }
    file.flush().unwrap();
    let tiny_bge = model_dir("tiny-bge");
    let mut child = spawn(&[
        "embed",
        "--model",
        tiny_bge.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
    ]);
    drop(child.stdin.take());
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || BufReader::new(stdout).lines().count());
    let (status, peak) = wait_with_peak_rss(&child);
    assert!(status == 0, "bge exited with status {status}");
    (reader.join().unwrap(), peak)
}

/// Reaps `child` with `wait4`, which reports the peak resident memory of that process alone
/// (Linux: in KiB).
#[cfg(target_os = "linux")]
fn wait_with_peak_rss(child: &Child) -> (i32, u64) {
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value, and wait4 writes it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as libc::pid_t;
    // SAFETY: plain system call on a child of this process that nothing else waits for.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid, "wait4: {}", std::io::Error::last_os_error());
    (libc::WEXITSTATUS(status), usage.ru_maxrss as u64 * 1024)
}

#[cfg(target_os = "linux")]
#[test]
fn memory_stays_bounded_on_200000_lines() {
    let (lines_20k, peak_20k) = embed_lines(20_000);
    let (lines_200k, peak_200k) = embed_lines(200_000);
    assert_eq!((lines_20k, lines_200k), (20_000, 200_000));
    eprintln!("peak RSS: {peak_20k} B for 20,000 lines, {peak_200k} B for 200,000");
    assert!(
        peak_200k < 300 << 20,
        "peak RSS {peak_200k} B on 200,000 lines"
    );
    // Ten times the lines, not more memory: nothing grows with the input. The peak moves by up
    // to 6 MB from run to run (how the threads' allocations interleave; 85-91 MB for 20,000
    // lines); reading the whole input first, as bge did before it streamed, grew it by 25 MB.
    assert!(
        peak_200k < peak_20k + (12 << 20),
        "peak RSS grew from {peak_20k} B (20,000 lines) to {peak_200k} B (200,000 lines)"
    );
}
