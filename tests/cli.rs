//! The `ddpm` binary as a user meets it.

use std::process::Command;

fn ddpm(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ddpm"))
        .args(args)
        .output()
        .expect("run ddpm")
}

#[test]
fn info_reports_kernels_driver_and_threads_without_panicking() {
    let out = ddpm(&["info"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.starts_with(&format!("ddpm {}", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    assert!(text.contains("CUDA kernels: "), "{text}");
    assert!(text.contains("CUDA driver: "), "{text}");
    assert!(text.contains("CPU: "), "{text}");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
    let built = ddpm::cuda::kernels::built_in();
    assert_eq!(text.contains("CUDA kernels: built in"), built, "{text}");
}

#[test]
fn info_json_is_machine_readable() {
    let out = ddpm(&["info", "--json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["kernels"]["built_in"], ddpm::cuda::kernels::built_in());
    assert!(v["driver"]["status"].is_string());
    assert!(v["cpu_threads"].as_u64().unwrap() >= 1);
}

#[test]
fn threads_flag_is_honoured_and_validated() {
    let out = ddpm(&["--threads", "3", "info", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["cpu_threads"], 3);
    let out = ddpm(&["--threads", "0", "info"]);
    assert_eq!(out.status.code(), Some(2), "usage errors exit with 2");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--threads"));
}

#[test]
fn help_lists_the_commands() {
    let out = ddpm(&["--help"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.contains("info") && text.contains("--threads"),
        "{text}"
    );
    let out = ddpm(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
}
