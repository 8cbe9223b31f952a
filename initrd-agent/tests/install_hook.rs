//! The hook runner, with the host's `/` as the chroot (root only) and scripts in a temporary
//! directory: output merged and batched, the environment, exit codes, the last lines in the
//! error, missing / not executable / bad interpreter, timeout, leftover background children.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use byol_agent::agent::install::hook::{self, HookError, HookSpec};

fn script(dir: &Path, name: &str, body: &str, mode: u32) -> String {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    p.display().to_string()
}

fn spec(script: String, timeout: Duration) -> HookSpec {
    HookSpec {
        root: "/".into(),
        script,
        env: vec![
            ("BOOT_MODE".into(), "uefi".into()),
            ("TARGET_DISK".into(), "/dev/vda".into()),
            ("ESP_DEVICE".into(), "/dev/vda2".into()),
        ],
        timeout,
        batch: Duration::from_millis(300),
        heartbeat: Duration::ZERO,
        stop: Default::default(),
    }
}

/// Pids of the processes whose command line is exactly `argv`.
fn processes(argv: &[&str]) -> Vec<u32> {
    let want: Vec<u8> = argv
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == want))
        .collect()
}

fn run(s: &HookSpec) -> (Result<hook::HookDone, HookError>, Vec<Vec<String>>) {
    let mut batches = Vec::new();
    let r = hook::run(s, &mut |b| batches.push(b));
    (r, batches)
}

#[test]
fn output_is_streamed_in_batches_with_the_environment() {
    let tmp = tempfile::tempdir().unwrap();
    let sh = script(
        tmp.path(),
        "ok.sh",
        "#!/bin/sh\necho \"mode=$BOOT_MODE disk=$TARGET_DISK esp=$ESP_DEVICE\"\necho to-stderr >&2\n\
         echo \"path=$PATH home=$HOME pwd=$(pwd)\"\nsleep 1\necho after\necho \"host-env=[$CARGO_MANIFEST_DIR$RUST_TEST_THREADS]\"\n",
        0o755,
    );
    let (r, batches) = run(&spec(sh, Duration::from_secs(20)));
    let done = r.unwrap();
    let all: Vec<String> = batches.concat();
    assert_eq!(
        all,
        [
            "mode=uefi disk=/dev/vda esp=/dev/vda2",
            "to-stderr",
            "path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin home=/root pwd=/",
            "after",
            "host-env=[]",
        ]
    );
    assert!(batches.len() >= 2, "{batches:?}");
    assert_eq!(done.lines, 5);
    assert!(done.seconds >= 1.0);
}

#[test]
fn a_failing_hook_gives_its_code_and_last_20_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let sh = script(
        tmp.path(),
        "fail.sh",
        "#!/bin/sh\nfor i in $(seq 1 30); do echo \"line $i\"; done\necho 'grub-install: error: boom' >&2\nexit 3\n",
        0o700,
    );
    let (r, batches) = run(&spec(sh.clone(), Duration::from_secs(20)));
    let e = r.unwrap_err();
    let HookError::Failed { code, last, .. } = &e else {
        panic!("{e:?}")
    };
    assert_eq!(*code, 3);
    assert_eq!(last.len(), 20);
    assert_eq!(last[0], "line 12");
    assert_eq!(last[19], "grub-install: error: boom");
    assert_eq!(batches.concat().len(), 31);
    let msg = e.to_string();
    assert!(
        msg.starts_with(&format!(
            "{sh} failed with exit code 3; its last lines:\nline 12\n"
        )),
        "{msg}"
    );
    assert!(msg.ends_with("\ngrub-install: error: boom"), "{msg}");
}

#[test]
fn missing_not_executable_and_bad_interpreter() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("none.sh").display().to_string();
    let (r, _) = run(&spec(missing.clone(), Duration::from_secs(5)));
    assert_eq!(
        r.unwrap_err().to_string(),
        format!(
            "the image has no {missing}: the guide's images must carry it to make the disk \
             bootable"
        )
    );
    let noexec = script(tmp.path(), "noexec.sh", "#!/bin/sh\necho hi\n", 0o644);
    let (r, _) = run(&spec(noexec.clone(), Duration::from_secs(5)));
    assert_eq!(
        r.unwrap_err().to_string(),
        format!(
            "{noexec} in the image is not executable (mode 644): make it executable (chmod +x)"
        )
    );
    let bad = script(tmp.path(), "bad.sh", "#!/no/such/shell\necho hi\n", 0o755);
    let (r, _) = run(&spec(bad.clone(), Duration::from_secs(5)));
    let msg = r.unwrap_err().to_string();
    assert!(
        msg.starts_with(&format!("cannot run {bad} in the image: "))
            && msg.ends_with("(is the interpreter of its #! line in the image?)"),
        "{msg}"
    );
}

#[test]
fn a_hook_past_its_timeout_is_killed_with_its_children() {
    let tmp = tempfile::tempdir().unwrap();
    let sh = script(
        tmp.path(),
        "slow.sh",
        "#!/bin/sh\necho start\nsleep 60 &\nsleep 60\n",
        0o755,
    );
    let t = Instant::now();
    let (r, _) = run(&spec(sh.clone(), Duration::from_secs(1)));
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
    assert_eq!(
        r.unwrap_err().to_string(),
        format!(
            "{sh} did not finish within 1s and was killed (raise the limit: the install's \
             hookTimeout, `byol machine hook-timeout`, or `byol serve --hook-timeout`); its last \
             lines:\nstart"
        )
    );
}

#[test]
fn a_long_hook_says_it_is_alive() {
    let tmp = tempfile::tempdir().unwrap();
    let sh = script(
        tmp.path(),
        "long.sh",
        "#!/bin/sh\necho start\nsleep 2.5\necho end\n",
        0o755,
    );
    let mut s = spec(sh.clone(), Duration::from_secs(60));
    s.heartbeat = Duration::from_secs(1);
    let (r, batches) = run(&s);
    let done = r.unwrap();
    let all: Vec<String> = batches.concat();
    // at least the 1 s and 2 s lines between the script's two; a loaded machine may start the
    // script late and add a 3 s one
    assert_eq!(all.first().map(String::as_str), Some("start"), "{all:?}");
    assert_eq!(all.last().map(String::as_str), Some("end"), "{all:?}");
    let beats = &all[1..all.len() - 1];
    assert!(beats.len() >= 2, "{all:?}");
    for (i, l) in beats.iter().enumerate() {
        assert_eq!(
            *l,
            format!(
                "byol: {sh} still running, {}s so far (time limit 1m)",
                i + 1
            )
        );
    }
    // the script's own lines only
    assert_eq!(done.lines, 2);
    assert_eq!(done.last, ["start", "end"]);
}

#[test]
fn leftover_background_children_do_not_hold_the_install() {
    let tmp = tempfile::tempdir().unwrap();
    let sh = script(
        tmp.path(),
        "bg.sh",
        "#!/bin/sh\n(sleep 60; echo never) &\necho done\nexit 0\n",
        0o755,
    );
    let t = Instant::now();
    let (r, batches) = run(&spec(sh, Duration::from_secs(30)));
    assert!(t.elapsed() < Duration::from_secs(6), "{:?}", t.elapsed());
    assert_eq!(r.unwrap().lines, 1);
    assert_eq!(batches.concat(), ["done"]);
}

#[test]
fn a_killed_hook_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let sh = script(
        tmp.path(),
        "kill.sh",
        "#!/bin/sh\necho bye\nkill -9 $$\n",
        0o755,
    );
    let (r, _) = run(&spec(sh.clone(), Duration::from_secs(10)));
    assert_eq!(
        r.unwrap_err().to_string(),
        format!("{sh} was killed by signal 9; its last lines:\nbye")
    );
}

#[test]
fn daemons_that_leave_the_process_group_die_with_the_hook() {
    let tmp = tempfile::tempdir().unwrap();
    // a daemon in its own session (setsid), as a service started by a package's postinst
    let sh = script(
        tmp.path(),
        "daemon.sh",
        "#!/bin/sh\nsetsid sleep 3000.125 < /dev/null > /dev/null 2>&1 &\necho started\nexit 0\n",
        0o755,
    );
    let (r, _) = run(&spec(sh, Duration::from_secs(20)));
    r.unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let left = processes(&["sleep", "3000.125"]);
    for pid in &left {
        let _ = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status();
    }
    assert!(left.is_empty(), "the hook's daemon outlived it: {left:?}");
}

#[test]
fn a_stop_from_the_server_kills_the_hook() {
    let tmp = tempfile::tempdir().unwrap();
    let sh = script(
        tmp.path(),
        "long.sh",
        "#!/bin/sh\necho working\nsleep 3000.25\n",
        0o755,
    );
    let mut s = spec(sh.clone(), Duration::from_secs(120));
    let stop = byol_agent::stop::Stop::new();
    s.stop = stop.clone();
    let t = Instant::now();
    let r = hook::run(&s, &mut |_| stop.stop("the server cancelled the install"));
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
    assert_eq!(
        r.unwrap_err().to_string(),
        format!("{sh} was killed: the server cancelled the install")
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(processes(&["sleep", "3000.25"]).is_empty());
}
