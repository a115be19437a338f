//! `eventhost new` in each language, as a user outside this repository
//! would use it: the project is created in a temporary directory, built by
//! its own `build.sh` (which fetches the language's pinned tools itself) and
//! passes its own `test.sh`, which runs the component through
//! `eventhost invoke`.

use std::path::Path;
use std::process::Command;

use crate::support::repo_root;

/// Creates handler `greeter` in `lang` under a fresh temporary directory,
/// runs its test, and returns the test's output.
fn scaffold_and_test(lang: &str) -> String {
    let outside = tempfile::tempdir().unwrap();
    assert!(!outside.path().starts_with(repo_root()));
    let eventhost = env!("CARGO_BIN_EXE_eventhost");
    let created = Command::new(eventhost)
        .args(["new", "greeter", "--lang", lang, "--dir"])
        .arg(outside.path())
        .output()
        .unwrap();
    assert!(created.status.success(), "eventhost new: {created:?}");
    let project = outside.path().join("greeter");
    assert!(project.join("handler.toml").exists());
    assert!(
        project.join("wit/handler.wit").exists(),
        "the WIT is vendored"
    );

    let mut test = Command::new(project.join("test.sh"));
    test.env("EVENTHOST", eventhost);
    if lang == "rust" {
        // Share compiled dependencies with the examples' build.
        test.env("CARGO_TARGET_DIR", repo_root().join("examples/target"));
    }
    let output = test.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{lang} scaffold's test.sh failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("test passed"), "{stdout}");
    assert!(project.join("greeter.wasm").exists());
    // The memory cap suits the language: interpreters need more.
    let memory = match lang {
        "python" => "64 MiB",
        "js" => "32 MiB",
        _ => "16 MiB",
    };
    let manifest = std::fs::read_to_string(project.join("handler.toml")).unwrap();
    assert!(
        manifest.contains(&format!("memory = \"{memory}\"")),
        "{manifest}"
    );
    // `invoke` finds the project's handler.toml without being told.
    let invoked = Command::new(eventhost)
        .args(["invoke", "greeter.wasm", "--event", "event.json"])
        .current_dir(&project)
        .output()
        .unwrap();
    assert!(
        invoked.status.success(),
        "invoke without --manifest: {invoked:?}"
    );
    refuses_a_second_scaffold(eventhost, outside.path(), lang);
    stdout
}

/// Creating a project over an existing one is refused.
fn refuses_a_second_scaffold(eventhost: &str, dir: &Path, lang: &str) {
    let again = Command::new(eventhost)
        .args(["new", "greeter", "--lang", lang, "--dir"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
}

#[test]
fn a_new_rust_handler_builds_and_passes_its_test() {
    scaffold_and_test("rust");
}

#[test]
fn a_new_python_handler_builds_and_passes_its_test() {
    scaffold_and_test("python");
}

#[test]
fn a_new_js_handler_builds_and_passes_its_test() {
    scaffold_and_test("js");
}

#[test]
fn bad_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["Greeter", "1st", "a_b", "-x", "x-"] {
        let output = Command::new(env!("CARGO_BIN_EXE_eventhost"))
            .args(["new", "--dir"])
            .arg(dir.path())
            .args(["--", name])
            .output()
            .unwrap();
        assert!(!output.status.success(), "{name} was accepted");
        assert!(String::from_utf8_lossy(&output.stderr).contains("not a handler name"));
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
