//! The `gateway` binary itself: usage errors, `migrate`, and `serve` stopping cleanly on SIGTERM.

// The helpers below are test code too (clippy only exempts `#[test]` functions).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Output, Stdio};

/// The binary with an empty environment (so the developer's `KEEL_*` variables do not leak in)
/// and JSON logs.
fn gateway() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_gateway"));
    command.env_clear().env("KEEL_TELEMETRY__FORMAT", "json");
    command
}

fn run(command: &mut Command) -> (i32, String, String) {
    let Output { status, stdout, stderr } = command.output().unwrap();
    (status.code().unwrap(), String::from_utf8(stdout).unwrap(), String::from_utf8(stderr).unwrap())
}

#[test]
fn help_lists_the_commands() {
    let (code, stdout, _) = run(gateway().arg("--help"));
    assert_eq!(code, 0);
    assert!(stdout.contains("serve") && stdout.contains("migrate"), "{stdout}");
}

#[test]
fn an_unknown_domain_exits_with_2_and_names_the_known_ones() {
    let (code, _, stderr) = run(gateway().args(["serve", "--only", "payroll"]));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("payroll") && stderr.contains("possible values: auth"), "{stderr}");
}

#[test]
fn a_bad_configuration_exits_with_1_and_says_why() {
    let (code, _, stderr) = run(gateway().args(["--config", "/nonexistent/keel.toml", "migrate"]));
    assert_eq!(code, 1);
    assert!(stderr.contains("/nonexistent/keel.toml does not exist"), "{stderr}");

    let (code, _, stderr) = run(gateway().arg("migrate").env("KEEL_HTTP__NO_SUCH_KEY", "1"));
    assert_eq!(code, 1);
    assert!(stderr.contains("KEEL_HTTP__NO_SUCH_KEY: unknown key"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line, once: {stderr}");

    let (code, _, stderr) = run(gateway().arg("migrate").env("KEEL_AUTH__SESSION_TTL_SECS", "99999999999999999"));
    assert_eq!(code, 1);
    assert!(stderr.contains("auth.session_ttl_secs (KEEL_AUTH__SESSION_TTL_SECS) must be from 60"), "{stderr}");

    let (code, _, stderr) = run(gateway().arg("migrate").env("KEEL_DATABASE__URL", "mysql://x"));
    assert_eq!(code, 1);
    assert!(stderr.contains("auth database settings"), "{stderr}");
}

#[test]
fn migrate_creates_the_database_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("data").display());
    let (code, stdout, stderr) = run(gateway().arg("migrate").env("KEEL_DATABASE__URL", &url));
    assert_eq!(code, 0, "{stderr}");
    assert!(dir.path().join("data/auth.db").is_file());
    assert!(!stdout.contains("\"migrations.applied\":0"), "{stdout}");
    let (code, stdout, stderr) = run(gateway().arg("migrate").env("KEEL_DATABASE__URL", &url));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("\"migrations.applied\":0"), "nothing left to apply: {stdout}");
}

#[test]
fn grant_admin_needs_an_existing_account_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("data").display());
    let (code, stdout, _) =
        run(gateway().args(["admin", "grant-admin", "nobody@example.com"]).env("KEEL_DATABASE__URL", &url));
    assert_eq!(code, 1);
    assert!(stdout.contains("No account with this email"), "{stdout}");
    let (code, _, stderr) = run(gateway().args(["admin", "grant-admin"]));
    assert_eq!(code, 2, "{stderr}");
}

/// One HTTP/1.1 request over a fresh connection, with a bearer token; returns the raw answer.
fn http_get(addr: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nx-request-id: cli-test\r\n\
         Authorization: Bearer keel_st_sekrit-header\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

type Lines = std::io::Lines<BufReader<std::process::ChildStdout>>;

/// `gateway serve --addr 127.0.0.1:0 --only auth` with `env`, once it listens: the process, its
/// log lines from there on, and the bound address (from the log line that announces it).
fn serve_auth(dir: &std::path::Path, env: &[(&str, &str)]) -> (std::process::Child, Lines, String) {
    let mut child = gateway()
        .args(["serve", "--addr", "127.0.0.1:0", "--only", "auth"])
        .env("KEEL_DATABASE__URL", format!("sqlite://{}", dir.display()))
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = lines
        .by_ref()
        .map(Result::unwrap)
        .find_map(|line| {
            let event: serde_json::Value = serde_json::from_str(&line).ok()?;
            (event["message"] == "gateway listening").then(|| event["http.addr"].as_str().unwrap().to_owned())
        })
        .expect("the gateway never said where it listens");
    (child, lines, addr)
}

#[test]
fn serve_listens_on_the_given_address_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, lines, addr) = serve_auth(dir.path(), &[("KEEL_HTTP__ADDR", "127.0.0.1:1")]); // --addr wins
    assert!(addr.starts_with("127.0.0.1:") && addr != "127.0.0.1:0" && addr != "127.0.0.1:1", "{addr}");

    let answer = http_get(&addr, "/healthz");
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    assert!(answer.contains("x-request-id: cli-test") && answer.ends_with(r#"{"status":"ok"}"#), "{answer}");
    let answer = http_get(&addr, "/readyz");
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    let answer = http_get(&addr, "/v1/auth/me?token=sekrit-query");
    assert!(answer.starts_with("HTTP/1.1 401 Unauthorized"), "{answer}");

    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    assert!(child.wait().unwrap().success(), "a graceful stop exits with 0");
    assert!(rest.iter().any(|line| line.contains("\"gateway stopped\"")), "{rest:#?}");
    // One line per request, with its id, route and status, and never a header or a query string.
    let me = rest
        .iter()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|event| event["message"] == "request completed" && event["span"]["url.path"] == "/v1/auth/me")
        .unwrap_or_else(|| panic!("no request line for /v1/auth/me: {rest:#?}"));
    assert_eq!(me["http.status_code"], 401);
    assert_eq!(me["span"]["request.id"], "cli-test");
    assert_eq!(me["span"]["http.route"], "/v1/auth/me");
    assert!(me["duration_ms"].is_number());
    assert!(!rest.iter().any(|line| line.contains("sekrit")), "a secret reached the log: {rest:#?}");
}

/// `/proc/PID/FILE` of `gateway serve --only auth` run with `setting` (a variable and its value)
/// if given, once it listens; the process is stopped after.
#[cfg(target_os = "linux")]
fn proc_file_of_serve(setting: Option<(&str, &str)>, file: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let env: Vec<(&str, &str)> = setting.into_iter().collect();
    let (mut child, _lines, _addr) = serve_auth(dir.path(), &env);
    // The spawned pid is the serving process (a process that replaces itself keeps its pid).
    let contents = std::fs::read(format!("/proc/{}/{file}", child.id())).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    contents
}

/// The kernel's view of the process: `THP_enabled: 0` once it asked for no transparent huge
/// pages (the default), 1 when `http.transparent_huge_pages` lets it use them.
#[cfg(target_os = "linux")]
#[test]
fn serve_turns_transparent_huge_pages_off_unless_allowed() {
    for (allowed, expected) in [(None, "0"), (Some("true"), "1")] {
        let setting = allowed.map(|v| ("KEEL_HTTP__TRANSPARENT_HUGE_PAGES", v));
        let status = String::from_utf8(proc_file_of_serve(setting, "status")).unwrap();
        let flag = status.lines().find_map(|l| l.strip_prefix("THP_enabled:")).map(str::trim);
        assert_eq!(flag, Some(expected), "allowed: {allowed:?}");
    }
}

/// The environment the serving process runs with: mimalloc told to give freed pages back at
/// once (`MIMALLOC_PURGE_DELAY=0`, set by the process replacing itself), unless the variable
/// was set already.
#[cfg(target_os = "linux")]
#[test]
fn serve_runs_with_the_allocator_giving_memory_back_at_once_unless_told_otherwise() {
    for (given, expected) in [(None, "MIMALLOC_PURGE_DELAY=0"), (Some("250"), "MIMALLOC_PURGE_DELAY=250")] {
        let environ = proc_file_of_serve(given.map(|v| ("MIMALLOC_PURGE_DELAY", v)), "environ");
        let vars: Vec<String> = environ.split(|&b| b == 0).map(|v| String::from_utf8_lossy(v).into_owned()).collect();
        let purge: Vec<&String> = vars.iter().filter(|v| v.starts_with("MIMALLOC_PURGE_DELAY=")).collect();
        assert_eq!(purge, [expected], "given: {given:?}");
        assert!(vars.iter().any(|v| v == "KEEL_TELEMETRY__FORMAT=json"), "the rest of the environment is kept");
    }
}

#[test]
fn worker_serves_no_domain_route_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = gateway()
        .args(["worker", "--addr", "127.0.0.1:0"])
        .env("KEEL_DATABASE__URL", format!("sqlite://{}", dir.path().display()))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = lines
        .by_ref()
        .map(Result::unwrap)
        .find_map(|line| {
            let event: serde_json::Value = serde_json::from_str(&line).ok()?;
            (event["message"] == "gateway listening").then(|| event["http.addr"].as_str().unwrap().to_owned())
        })
        .expect("the worker never said where it listens");
    assert!(http_get(&addr, "/healthz").starts_with("HTTP/1.1 200 OK"));
    assert!(http_get(&addr, "/readyz").starts_with("HTTP/1.1 200 OK"), "ready when its domains' databases are");
    let answer = http_get(&addr, "/v1/auth/me");
    assert!(answer.starts_with("HTTP/1.1 404 Not Found"), "a worker serves no API route: {answer}");

    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    assert!(child.wait().unwrap().success(), "a graceful stop exits with 0");
    assert!(rest.iter().any(|line| line.contains("\"worker stopped\"")), "{rest:#?}");
}

#[test]
fn jobs_stats_lists_every_in_process_domain() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().display());
    let (code, stdout, stderr) = run(gateway().args(["jobs", "stats"]).env("KEEL_DATABASE__URL", &url));
    assert_eq!(code, 1, "no tables yet: {stdout} {stderr}");
    let (code, _, stderr) = run(gateway().arg("migrate").env("KEEL_DATABASE__URL", &url));
    assert_eq!(code, 0, "{stderr}");
    let (code, stdout, stderr) = run(gateway().args(["jobs", "stats"]).env("KEEL_DATABASE__URL", &url));
    assert_eq!(code, 0, "{stderr}");
    let json_start = stdout.find('{').unwrap();
    let stats: serde_json::Value = serde_json::from_str(&stdout[json_start..]).unwrap();
    assert_eq!(stats["auth"], serde_json::json!({"depths": [], "oldest_ready": []}), "{stdout}");
    let (code, stdout, _) =
        run(gateway().args(["jobs", "retry", "--domain", "auth", "nope"]).env("KEEL_DATABASE__URL", &url));
    assert_eq!(code, 1);
    assert!(stdout.contains("is not a job id"), "{stdout}");
}
