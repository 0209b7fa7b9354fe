use super::*;
use rand::{RngExt, SeedableRng};

fn engine() -> Engine {
    Engine::new(
        EngineConfig {
            output: OutputMode::Routeros,
            mount_point: "storage-pool".into(),
            pool_size: 1 << 40,
            state_file: None,
            data_dir: None,
            identity: "RDS".into(),
            error_exit_status: 1,
            fixed_time: Some(0),
            latency_seed: 0,
            history_depth: 10,
            profile: Profile::default(),
        },
        State::default(),
    )
}

#[test]
fn hostile_input_never_panics() {
    let e = engine();
    let fixed = [
        "",
        "   ",
        "/",
        "//",
        "/disk//print",
        "]",
        "[",
        "=",
        "\\",
        "\"\\",
        "/disk print where",
        "/disk print where slot",
        "/disk print where slot=",
        "/disk print where =x",
        "/disk remove [find",
        "/disk remove [find slot=x",
        "/disk remove []",
        "/disk remove [find]",
        "/disk add type=file file-path=/storage-pool/\u{e9}.img file-size=1G slot=x",
        "/disk add type=file file-path=/storage-pool/y.img file-size=1G slot=\"\u{e9}\u{1F600}\\\"\"",
        "/disk add type=file file-path=/storage-pool/a.img file-size=18446744073709551615 slot=a",
        "/mock orphan-file path=/storage-pool/b.img size=18446744073709551615",
        "/mock orphan-file path=/storage-pool/c.img size=18446744073709551615",
        "/disk print detail where mount-point=storage-pool",
        "/disk print detail",
        "/file print detail",
        "/disk set a file-size=99999999999T",
        "/mock fault latency min=99999999999m max=1ms",
        "/mock history count=-1",
        "/file print where name~\"[\"",
        "/disk monitor-traffic [find] once",
        "/disk add copy-from=[find slot=a] type=file file-path=/storage-pool/z.img slot=z",
        "/disk print detail where slot~\"(a|\"",
        ":if",
        ":if (",
        ":if ([:len [/disk find]] = 0)",
        ":if ([:len [/disk find]] = x) do={}",
        ":if ([:len [/disk find slot=a]] > 0) do={/disk remove [find slot=a]} else={:put \"b\"} x",
        ":put",
        ":put \"",
        ";;;",
        "/disk print; /disk print; :put [/file get x size]",
        ":if ([:len [/file find name=\"\u{e9}\"]] != 1) do={:if ([:len [/disk find]] < 2) do={:put \"x\"}}",
    ];
    for line in fixed {
        let r = e.execute(line);
        assert!(r.output.is_ascii(), "{line:?}: {r:?}");
    }
    let _ = e.decide("anything");
    // A random soup of RouterOS-ish fragments.
    let parts = [
        "/disk",
        "/file",
        "/mock",
        "add",
        "print",
        "set",
        "remove",
        "detail",
        "where",
        "find",
        "[",
        "]",
        "=",
        "~",
        "!=",
        "\"",
        "\\",
        "slot",
        "file-size",
        "1G",
        "x",
        " ",
        " and ",
        "type=file",
        "file-path=/storage-pool/q.img",
        "copy-from=",
        "once",
        "fault",
        "fail",
        ";",
        ":if ",
        ":put ",
        "(",
        ")",
        "{",
        "}",
        "do=",
        "else=",
        "[:len ",
    ];
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    for _ in 0..3000 {
        let n = rng.random_range(0..12);
        let line: String = (0..n)
            .map(|_| parts[rng.random_range(0..parts.len())])
            .collect();
        let _ = e.execute(&line);
    }
}

#[test]
fn capacity_saturates_instead_of_overflowing() {
    let e = engine();
    e.add_orphan_file("/storage-pool/a.img", u64::MAX).unwrap();
    e.add_orphan_file("/storage-pool/b.img", u64::MAX).unwrap();
    let out = e.execute("/disk print detail where mount-point=\"storage-pool\"");
    assert!(out.output.contains("free=0 use=100%"), "{}", out.output);
    let full = e.execute("/disk add type=file file-path=/storage-pool/c.img file-size=1 slot=c");
    assert_eq!(full.output, "failure: not enough space\r\n");
}
