//! `lamplighter users ...` as an operator runs it on the server: passwords from standard
//! input, a clear line and exit code 1 for a user who does not exist, and each change seen
//! by the accounts file the dashboard reads.

use std::io::Write;
use std::path::Path;
use std::process::{Output, Stdio};

use lamplighter_dashboards::accounts::{Accounts, Role};

use crate::util::bin;

fn users(dir: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = bin()
        .arg("users")
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn logs_in(dir: &Path, user: &str, password: &str) -> bool {
    Accounts::open(dir)
        .unwrap()
        .check_password(user, password)
        .unwrap()
        .is_some()
}

#[test]
fn an_operator_resets_a_password_changes_a_role_and_removes_a_user() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let add = users(
        d,
        &["add", "--username", "ann", "--role", "viewer"],
        Some("first password here\n"),
    );
    assert!(
        add.status.success(),
        "{}",
        String::from_utf8_lossy(&add.stderr)
    );
    let mut accounts = Accounts::open(d).unwrap();
    let (ann_id, _) = accounts
        .check_password("ann", "first password here")
        .unwrap()
        .expect("ann logs in");
    let (session, _) = accounts
        .create_session(
            ann_id,
            lamplighter_dashboards::wall_ms(),
            std::time::Duration::from_secs(60),
        )
        .unwrap();
    drop(accounts);

    let out = users(
        d,
        &["passwd", "--username", "ann"],
        Some("second password here\n"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!logs_in(d, "ann", "first password here"));
    assert!(logs_in(d, "ann", "second password here"));
    let held = Accounts::open(d)
        .unwrap()
        .session_principal(&session, lamplighter_dashboards::wall_ms())
        .unwrap();
    assert!(held.is_none(), "a new password ends the sessions");
    let out = users(d, &["passwd", "--username", "ann"], Some("short\n"));
    assert_eq!(out.status.code(), Some(1), "a weak password is refused");

    let out = users(
        d,
        &["set-role", "--username", "ann", "--role", "operator"],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list = users(d, &["list"], None);
    assert!(String::from_utf8_lossy(&list.stdout).contains("ann,operator,"));
    let out = users(
        d,
        &["set-role", "--username", "ann", "--role", "boss"],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    let role = Accounts::open(d)
        .unwrap()
        .user("ann")
        .unwrap()
        .unwrap()
        .role;
    assert_eq!(role, Role::Operator, "a bad role changes nothing");

    let out = users(d, &["remove", "--username", "ann"], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!logs_in(d, "ann", "second password here"));
    let out = users(d, &["remove", "--username", "ann"], None);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "one clear line: {err}");
    assert!(err.contains("no user \"ann\""), "{err}");
}
