//! `cmae check-fixture` exit codes: 0 all pass, 2 unusable input.

use std::process::Command;

fn cmae() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cmae"))
}

#[test]
fn passes_a_committed_fixture_with_exit_0() {
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/one_shot.safetensors");
    let out = cmae().args(["check-fixture", file]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.lines().any(|l| l.starts_with("loss ") && l.ends_with("ok")), "{stdout}");
    assert!(stdout.trim_end().ends_with("0 failed"), "{stdout}");
}

#[test]
fn unusable_files_exit_2_with_one_clear_line() {
    let dir = std::env::temp_dir().join(format!("cmae-fx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let garbage = dir.join("garbage.safetensors");
    std::fs::write(&garbage, b"definitely not safetensors").unwrap();
    for (file, want) in [(dir.join("missing.safetensors"), "cannot read"), (garbage, "not a safetensors file")] {
        let out = cmae().args(["check-fixture", file.to_str().unwrap()]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        let errors: Vec<&str> =
            stderr.lines().filter(|l| l.starts_with("error: ") && !l.contains("XDG_RUNTIME_DIR")).collect();
        assert_eq!(errors.len(), 1, "{stderr}");
        assert!(errors[0].contains(want), "{stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
