//! `eventhost new NAME --lang rust|python|js`: a handler project that
//! builds with one command (`./build.sh`) and passes its own test
//! (`./test.sh`, which runs it through `eventhost invoke`).
//!
//! Everything the project needs from this repository is compiled into the
//! binary and written into the project: the WIT contract, the language's SDK
//! and the template. So a scaffold works anywhere, with no checkout of this
//! repository and no unpublished package; it only fetches the language's
//! own tools (crates, componentize-py, componentize-js) on its first build.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};

#[derive(Debug, Args)]
pub struct NewArgs {
    /// The handler's name: lowercase letters, digits and `-`, starting with
    /// a letter. Also the project's folder and the component's file name.
    name: String,
    /// The language to write the handler in.
    #[arg(long, value_enum, default_value_t = Lang::Rust)]
    lang: Lang,
    /// Where to create the project folder.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Lang {
    Rust,
    Python,
    Js,
}

/// A file of the scaffold: its path in the project and its text, with
/// `{{name}}` (and `{{crate}}`, the name as a Rust identifier; `{{memory}}`,
/// the language's memory cap) to fill in.
type Template = (&'static str, &'static str);

/// `embed!("templates/x", "y")`: the repository file `templates/x` as
/// project file `y`.
macro_rules! embed {
    ($from:literal, $to:literal) => {
        (
            $to,
            include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../", $from)),
        )
    };
}

const WIT: &[Template] = &[
    embed!("wit/handler.wit", "wit/handler.wit"),
    embed!(
        "wit/deps/keyvalue/atomic.wit",
        "wit/deps/keyvalue/atomic.wit"
    ),
    embed!("wit/deps/keyvalue/batch.wit", "wit/deps/keyvalue/batch.wit"),
    embed!("wit/deps/keyvalue/store.wit", "wit/deps/keyvalue/store.wit"),
    embed!("wit/deps/keyvalue/watch.wit", "wit/deps/keyvalue/watch.wit"),
    embed!("wit/deps/keyvalue/world.wit", "wit/deps/keyvalue/world.wit"),
];

const COMMON: &[Template] = &[
    embed!("templates/common/test.sh", "test.sh"),
    embed!("templates/common/event.json", "event.json"),
    embed!("templates/common/handler.toml", "handler.toml"),
];

const RUST: &[Template] = &[
    embed!("templates/rust/Cargo.toml", "Cargo.toml"),
    embed!("templates/rust/.cargo/config.toml", ".cargo/config.toml"),
    embed!("templates/rust/src/lib.rs", "src/lib.rs"),
    embed!("templates/rust/build.sh", "build.sh"),
    embed!("templates/rust/gitignore", ".gitignore"),
    embed!("sdk/Cargo.toml", "sdk/Cargo.toml"),
    embed!("sdk/src/lib.rs", "sdk/src/lib.rs"),
    embed!("sdk/src/events.rs", "sdk/src/events.rs"),
    embed!("sdk/src/http.rs", "sdk/src/http.rs"),
    embed!("sdk/src/kv.rs", "sdk/src/kv.rs"),
];

const PYTHON: &[Template] = &[
    embed!("templates/python/app.py", "app.py"),
    embed!("templates/python/build.sh", "build.sh"),
    embed!("templates/python/gitignore", ".gitignore"),
    embed!(
        "sdk/python/build-requirements.txt",
        "sdk/build-requirements.txt"
    ),
    embed!("sdk/python/eventhost_build.py", "sdk/eventhost_build.py"),
    embed!(
        "sdk/python/eventhost/__init__.py",
        "sdk/eventhost/__init__.py"
    ),
    embed!("sdk/python/eventhost/_wit.py", "sdk/eventhost/_wit.py"),
    embed!("sdk/python/eventhost/events.py", "sdk/eventhost/events.py"),
    embed!("sdk/python/eventhost/http.py", "sdk/eventhost/http.py"),
    embed!("sdk/python/eventhost/kv.py", "sdk/eventhost/kv.py"),
    embed!("sdk/python/eventhost/log.py", "sdk/eventhost/log.py"),
    embed!(
        "sdk/python/wasi-http-wit/cli.wit",
        "sdk/wasi-http-wit/cli.wit"
    ),
    embed!(
        "sdk/python/wasi-http-wit/clocks.wit",
        "sdk/wasi-http-wit/clocks.wit"
    ),
    embed!(
        "sdk/python/wasi-http-wit/filesystem.wit",
        "sdk/wasi-http-wit/filesystem.wit"
    ),
    embed!(
        "sdk/python/wasi-http-wit/http.wit",
        "sdk/wasi-http-wit/http.wit"
    ),
    embed!(
        "sdk/python/wasi-http-wit/io.wit",
        "sdk/wasi-http-wit/io.wit"
    ),
    embed!(
        "sdk/python/wasi-http-wit/random.wit",
        "sdk/wasi-http-wit/random.wit"
    ),
    embed!(
        "sdk/python/wasi-http-wit/sockets.wit",
        "sdk/wasi-http-wit/sockets.wit"
    ),
];

const JS: &[Template] = &[
    embed!("templates/js/handler.ts", "handler.ts"),
    embed!("templates/js/build.sh", "build.sh"),
    embed!("templates/js/tsconfig.json", "tsconfig.json"),
    embed!("templates/js/gitignore", ".gitignore"),
    embed!("sdk/js/index.js", "eventhost-sdk/index.js"),
    embed!("sdk/js/index.d.ts", "eventhost-sdk/index.d.ts"),
    embed!("sdk/js/kv.js", "eventhost-sdk/kv.js"),
    embed!("sdk/js/kv.d.ts", "eventhost-sdk/kv.d.ts"),
    embed!("sdk/js/events.js", "eventhost-sdk/events.js"),
    embed!("sdk/js/events.d.ts", "eventhost-sdk/events.d.ts"),
    embed!("sdk/js/build.mjs", "eventhost-sdk/build.mjs"),
];

pub fn execute(args: NewArgs) -> Result<()> {
    check_name(&args.name)?;
    let project = args.dir.join(&args.name);
    if project.exists() {
        bail!("{} already exists", project.display());
    }
    let files = WIT.iter().chain(COMMON).chain(match args.lang {
        Lang::Rust => RUST,
        Lang::Python => PYTHON,
        Lang::Js => JS,
    });
    for (path, text) in files {
        write(&project, path, &fill(text, &args.name, args.lang))?;
    }
    if args.lang == Lang::Js {
        write(&project, "package.json", &js_package(&args.name)?)?;
    }
    println!("created {} ({:?} handler)", project.display(), args.lang);
    println!(
        "  cd {} && ./build.sh    # builds {}.wasm",
        project.display(),
        args.name
    );
    println!("  ./test.sh              # runs it on event.json with `eventhost invoke`");
    println!(
        "  then copy {0}.wasm and handler.toml (as {0}.toml) into a plugins/ directory",
        args.name
    );
    Ok(())
}

/// The project's package.json: its build tools pinned exactly as the SDK's
/// own (from sdk/js/package.json, so the two never drift apart).
fn js_package(name: &str) -> Result<String> {
    let sdk: serde_json::Value = serde_json::from_str(include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../sdk/js/package.json"
    )))?;
    let package = serde_json::json!({
        "name": name,
        "version": "0.1.0",
        "private": true,
        "type": "module",
        "scripts": { "build": "./build.sh", "test": "./test.sh" },
        "devDependencies": sdk["devDependencies"],
    });
    Ok(serde_json::to_string_pretty(&package)? + "\n")
}

fn check_name(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let starts_with_letter = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !starts_with_letter || !rest_ok || name.ends_with('-') || name.len() > 64 {
        bail!(
            "{name:?} is not a handler name: use lowercase letters, digits and `-`, \
             starting with a letter (it names the folder, the component and the consumer)"
        );
    }
    Ok(())
}

fn fill(text: &str, name: &str, lang: Lang) -> String {
    text.replace("{{name}}", name)
        .replace("{{crate}}", &name.replace('-', "_"))
        .replace("{{memory}}", memory(lang))
}

/// The manifest's memory cap: every Python and JavaScript instance carries
/// its interpreter (see docs/guide/writing-handlers.md).
fn memory(lang: Lang) -> &'static str {
    match lang {
        Lang::Rust => "16 MiB",
        Lang::Python => "64 MiB",
        Lang::Js => "32 MiB",
    }
}

fn write(project: &Path, path: &str, text: &str) -> Result<()> {
    let target = project.join(path);
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(&target, text).with_context(|| format!("writing {}", target.display()))?;
    if path.ends_with(".sh") {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(())
}
