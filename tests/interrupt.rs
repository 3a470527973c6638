//! Ctrl-C and SIGTERM lose no work (src/interrupt.rs): training signalled mid-run finishes the
//! step in flight, saves a checkpoint, says how to continue and exits 130 (143 for SIGTERM), and
//! the resumed run ends bit for bit where a straight run does; a second signal during that save
//! stops at once and leaves the previous checkpoint intact; sampling waits for the file it is
//! writing; `--resume` of a folder without a checkpoint says what to do.
#![cfg(unix)]

use std::ffi::CString;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ddpm::train::Checkpoint;

mod common;
use common::{assert_same_state, ddpm, fails_with, ok, temp_dir, write_model};

const BIN: &str = env!("CARGO_BIN_EXE_ddpm");

/// A fresh run of the small model with no checkpoint before its last step.
fn train_args<'a>(model: &'a str, out: &'a str, steps: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "--model",
        model,
        "--steps",
        steps,
        "--batch-size",
        "2",
        "--seed",
        "7",
        "--sample-every",
        "0",
        "--checkpoint-every",
        "100000",
        "--out",
        out,
        "--device",
        "cpu",
        "-q",
    ]
}

fn signal(child: &Child, sig: i32) {
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, sig) };
    assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
}

fn mkfifo(path: &Path) {
    let c = CString::new(path.to_str().unwrap()).unwrap();
    let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
    assert_eq!(
        rc,
        0,
        "mkfifo {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

/// The highest step in a run's log.csv.
fn logged_step(run: &Path) -> u64 {
    std::fs::read_to_string(run.join("log.csv"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(',').next()?.parse().ok())
        .max()
        .unwrap_or(0)
}

/// Polls until `done` holds; panics if `child` exits first or after two minutes.
fn wait_until(child: &mut Child, what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run exited ({status}) while waiting for {what}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Waits for `child` to exit, at most `limit`; kills it and panics past that.
fn wait_at_most(child: &mut Child, limit: Duration, what: &str) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn read_stderr(child: &mut Child) -> String {
    let mut s = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut s).unwrap();
    s
}

/// The step files of a run (hidden temporaries and `latest` left out).
fn step_files(run: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("step_"))
        .collect();
    v.sort();
    v
}

/// Signals a run once its log shows step `after`, and checks what the interrupt left: the exit
/// status, the message and a checkpoint at the step it names. Returns that step.
fn interrupt_run(args: &[&str], run: &Path, after: u64, sig: i32, status: i32, steps: u64) -> u64 {
    let mut child = Command::new(BIN)
        .args(args)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(&mut child, "the log to reach the step", || {
        logged_step(run) >= after
    });
    signal(&child, sig);
    let code = wait_at_most(&mut child, Duration::from_secs(120), "the signalled run");
    let err = read_stderr(&mut child);
    assert_eq!(code.code(), Some(status), "{code}:\n{err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("interrupted at step "))
        .unwrap_or_else(|| panic!("no interrupt message:\n{err}"));
    let step: u64 = line["interrupted at step ".len()..]
        .split(';')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(step >= after && step < steps, "{line}");
    let path = run
        .join("checkpoints")
        .join(format!("step_{step:07}.safetensors"));
    assert_eq!(
        line,
        format!(
            "interrupted at step {step}; checkpoint: {}; continue with: ddpm train --resume {}",
            path.display(),
            run.display()
        )
    );
    assert_eq!(Checkpoint::load(&path).unwrap().step, step);
    let latest = Checkpoint::load(&run.join("checkpoints/latest.safetensors")).unwrap();
    assert_eq!(latest.step, step);
    // The log reaches the checkpoint, so the resumed run's rows follow on.
    assert_eq!(logged_step(run), step, "log.csv");
    step
}

/// SIGINT, then SIGTERM on the resumed run, each between checkpoints (none is due before the
/// last step): each saves the step it finished, and the twice-resumed run ends bit for bit
/// where a straight run ends.
#[test]
fn a_signalled_run_saves_its_step_and_resumes_bit_for_bit() {
    const STEPS: u64 = 800;
    let dir = temp_dir("int-resume");
    let model = write_model(&dir);
    let steps = STEPS.to_string();
    let straight = dir.join("straight");
    ok(&ddpm(&train_args(
        &model,
        straight.to_str().unwrap(),
        &steps,
    )));

    let run = dir.join("run");
    let r = run.to_str().unwrap();
    let first = interrupt_run(
        &train_args(&model, r, &steps),
        &run,
        10,
        libc::SIGINT,
        130,
        STEPS,
    );
    assert_eq!(
        step_files(&run),
        [format!("step_{first:07}.safetensors")],
        "only the interrupt's checkpoint: the run was between checkpoints"
    );
    let resume = ["train", "--resume", r, "--device", "cpu", "-q"];
    let second = interrupt_run(&resume, &run, first + 10, libc::SIGTERM, 143, STEPS);
    assert!(second > first);
    ok(&ddpm(&resume));

    let a = Checkpoint::load(&straight.join("checkpoints/latest.safetensors")).unwrap();
    let b = Checkpoint::load(&run.join("checkpoints/latest.safetensors")).unwrap();
    assert_eq!(b.step, STEPS);
    assert_same_state(&a, &b);
    let _ = std::fs::remove_dir_all(dir);
}

/// The save after a first SIGINT is held up (its temporary file is a FIFO nobody reads, so
/// opening it blocks): a second SIGINT ends the process at once with 130, without the interrupt
/// message, and the run's previous checkpoint is still the newest and verifies.
#[test]
fn a_second_signal_during_the_save_stops_at_once_keeping_the_previous_checkpoint() {
    let dir = temp_dir("int-twice");
    let model = write_model(&dir);
    let run = dir.join("run");
    let r = run.to_str().unwrap();
    ok(&ddpm(&train_args(&model, r, "5")));
    let ck_dir = run.join("checkpoints");
    let before = std::fs::read(ck_dir.join("step_0000005.safetensors")).unwrap();

    let mut child = Command::new(BIN)
        .args([
            "train", "--resume", r, "--steps", "100000", "--device", "cpu",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Every save this process could start blocks in opening its temporary file. The FIFOs are
    // named by its process id, so it is stopped while they are made: a step takes about a
    // millisecond, a FIFO about as long, and it would otherwise outrun them.
    const LAST_FIFO: u64 = 1000;
    let pid = child.id();
    signal(&child, libc::SIGSTOP);
    for step in 6..=LAST_FIFO {
        mkfifo(&ck_dir.join(format!(".step_{step:07}.safetensors.tmp-{pid}")));
    }
    signal(&child, libc::SIGCONT);
    let mut err = BufReader::new(child.stderr.take().unwrap());
    wait_until(&mut child, "step 15", || logged_step(&run) >= 15);
    signal(&child, libc::SIGINT);
    let mut said = String::new();
    loop {
        let mut line = String::new();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "no saving line:\n{said}"
        );
        said.push_str(&line);
        if let Some(rest) = line.strip_prefix("Ctrl-C (SIGINT): saving step ") {
            let step: u64 = rest.split(' ').next().unwrap().parse().unwrap();
            assert!(
                step <= LAST_FIFO,
                "the run reached step {step} before the signal, past the FIFOs:\n{said}"
            );
            break;
        }
    }
    // The save is under way and stays blocked: the second signal must end it.
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        child.try_wait().unwrap().is_none(),
        "exited before the second signal"
    );
    signal(&child, libc::SIGINT);
    let status = wait_at_most(
        &mut child,
        Duration::from_secs(30),
        "after the second SIGINT",
    );
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
    said.push_str(&rest);
    assert_eq!(status.code(), Some(130), "{status}:\n{said}");
    assert!(!said.contains("interrupted at step"), "{said}");

    assert_eq!(step_files(&run), ["step_0000005.safetensors"]);
    assert_eq!(
        std::fs::read(ck_dir.join("step_0000005.safetensors")).unwrap(),
        before
    );
    let latest = Checkpoint::load(&ck_dir.join("latest.safetensors")).unwrap();
    assert_eq!(latest.step, 5);
    // And it resumes from there; the dead process's temporaries are cleared away.
    let out = ddpm(&["train", "--resume", r, "--steps", "6", "--device", "cpu"]);
    ok(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("step_0000005.safetensors (step 5)"));
    let left: Vec<_> = std::fs::read_dir(&ck_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let _ = std::fs::remove_dir_all(dir);
}

/// A SIGINT while `sample` writes a file (its `--save-raw` temporary is a FIFO, so the write
/// blocks until the test reads it) waits for that write to end, then exits 130; every PNG
/// written is whole and no temporary file is left in `--out`.
#[test]
fn sampling_interrupted_finishes_the_file_in_flight_and_exits_130() {
    let dir = temp_dir("int-sample");
    let model = write_model(&dir);
    let run = dir.join("run");
    ok(&ddpm(&train_args(&model, run.to_str().unwrap(), "2")));
    let out = dir.join("samples");
    let raw_dir = dir.join("raw");
    std::fs::create_dir_all(&raw_dir).unwrap();
    let raw = raw_dir.join("raw.safetensors");
    let mut child = Command::new(BIN)
        .args(["sample", "--checkpoint", run.to_str().unwrap()])
        .args(["--num", "3", "--steps", "2", "--sampler", "ddim", "-q"])
        .args(["--out", out.to_str().unwrap()])
        .args(["--save-raw", raw.to_str().unwrap(), "--device", "cpu"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let fifo = raw_dir.join(format!(".raw.safetensors.tmp-{}", child.id()));
    // Stopped while the FIFO is made, so that it is there before the write, however slow the
    // machine.
    signal(&child, libc::SIGSTOP);
    mkfifo(&fifo);
    signal(&child, libc::SIGCONT);
    // The raw tensor is written last: once the grid is there, the writer is at the FIFO.
    wait_until(&mut child, "the grid", || out.join("grid.png").exists());
    std::thread::sleep(Duration::from_millis(200));
    signal(&child, libc::SIGINT);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        child.try_wait().unwrap().is_none(),
        "exited with a write in flight"
    );
    // Let the write go on (a FIFO cannot be synced, so it then fails; the exit comes first).
    let mut taken = Vec::new();
    std::io::Read::read_to_end(&mut std::fs::File::open(&fifo).unwrap(), &mut taken).unwrap();
    assert!(!taken.is_empty());
    let status = wait_at_most(&mut child, Duration::from_secs(30), "after the write");
    let err = read_stderr(&mut child);
    assert_eq!(status.code(), Some(130), "{status}:\n{err}");
    assert!(!err.contains("error"), "{err}");
    for e in std::fs::read_dir(&out).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_str().unwrap();
        assert!(!name.contains(".tmp-"), "temporary file left: {name}");
        image::open(&p).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// `--resume` of a folder with no checkpoint is a usage error that gives the command to start
/// the run afresh there, or points to another `--out`.
#[test]
fn resuming_a_folder_without_a_checkpoint_says_what_to_do() {
    let dir = temp_dir("int-empty");
    let run = dir.join("run");
    std::fs::create_dir_all(run.join("checkpoints")).unwrap();
    std::fs::write(run.join("config.json"), "{}").unwrap();
    let r = run.to_str().unwrap();
    let out = ddpm(&["train", "--resume", r, "--device", "cpu"]);
    fails_with(
        &out,
        2,
        &format!("Start it afresh in the same folder with: ddpm train --out {r}"),
    );
    fails_with(&out, 2, "choose another --out");
    fails_with(&out, 2, "holds no checkpoint");

    let other = dir.join("other");
    std::fs::create_dir_all(&other).unwrap();
    let o = other.to_str().unwrap();
    let out = ddpm(&["train", "--resume", o, "--device", "cpu"]);
    fails_with(&out, 2, "not a training run");
    fails_with(&out, 2, &format!("ddpm train --out {o}"));
    let _ = std::fs::remove_dir_all(dir);
}
