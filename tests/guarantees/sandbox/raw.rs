//! Hand-written guests: core modules in WAT made into components against
//! the `core` world of `wit/handler.wit` by `wit-component`.
//!
//! Safe Rust cannot misbehave at the canonical ABI (pass a string that is
//! not UTF-8, hand back a bad pointer from `cabi_realloc`, grow a table), and
//! a hostile guest is not written in safe Rust. Each guest is a small core
//! module: [`guest`] wraps a body for `handle` in the imports, the memory and
//! the bump allocator every one of them shares.

use wit_component::{ComponentEncoder, StringEncoding};
use wit_parser::Resolve;

/// The imports, memory, allocator and helpers around a `handle` body.
///
/// - `$realloc` (`cabi_realloc`) is a bump allocator from 64 KiB up; it
///   misbehaves once `$armed` is set: `armed_realloc` is its body then.
/// - `$hostile` is true when the event's `type` starts with `h`, so one
///   guest can run well-behaved events too (the record's `type` string is at
///   offset 24 of the `event` the host lowers into memory).
/// - `$ok` is a `result` of `ok`, for `handle` to return.
/// - Bytes 64.. hold `\ff\fe\fd`, a string that is not UTF-8, and 80.. `tag`.
fn guest(extra: &str, armed_realloc: &str, handle: &str) -> String {
    format!(
        r#"(module
  (import "eventhost:handler/logging@0.2.0" "log" (func $log (param i32 i32 i32)))
  (import "eventhost:handler/config@0.2.0" "get" (func $get (param i32 i32 i32)))
  {extra}
  (memory (export "memory") 17)
  (global $heap (mut i32) (i32.const 65536))
  (global $armed (mut i32) (i32.const 0))
  (data (i32.const 64) "\ff\fe\fd")
  (data (i32.const 80) "tag")
  (func $realloc (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (local $at i32)
    (if (global.get $armed) (then {armed_realloc}))
    (local.set $at (global.get $heap))
    (global.set $heap (i32.add (local.get $at) (i32.add (local.get 3) (i32.const 8))))
    (i32.and (i32.add (local.get $at) (i32.const 7)) (i32.const -8)))
  (func $hostile (param $event i32) (result i32)
    (i32.eq (i32.load8_u (i32.load (i32.add (local.get $event) (i32.const 24))))
            (i32.const 104)))
  (func $ok (result i32) (i32.store (i32.const 0) (i32.const 0)) (i32.const 0))
  (func (export "handle") (param $event i32) (result i32)
    {handle})
)"#
    )
}

/// A component of the `core` world from a core module in WAT.
fn component(wat: &str) -> Vec<u8> {
    component_of_world(wat, "")
}

/// Like [`component`], with `extra_wit` (a package whose world `extra`
/// includes the `core` world) as the world.
fn component_of_world(wat: &str, extra_wit: &str) -> Vec<u8> {
    let mut resolve = Resolve::default();
    let (handler, _) = resolve
        .push_dir(crate::support::repo_root().join("wit"))
        .expect("parsing wit/");
    let world = if extra_wit.is_empty() {
        resolve.select_world(&[handler], Some("core"))
    } else {
        let extra = resolve.push_str("extra.wit", extra_wit).expect("extra WIT");
        resolve.select_world(&[extra], Some("extra"))
    }
    .expect("the world");
    let mut module = wat::parse_str(wat).expect("the guest's WAT");
    wit_component::embed_component_metadata(&mut module, &resolve, world, StringEncoding::UTF8)
        .expect("embedding the world");
    ComponentEncoder::default()
        .module(&module)
        .and_then(|encoder| encoder.validate(true).encode())
        .expect("encoding the component")
}

/// Grows a table by 1,000 elements at a time, and keeps asking once refused.
pub fn table_grow() -> Vec<u8> {
    component(&guest(
        "(table $t 1 funcref)",
        "",
        "(loop $more
           (drop (table.grow $t (ref.null func) (i32.const 1000)))
           (br $more))
         unreachable",
    ))
}

/// Logs a line that is not UTF-8 (if the event's type starts with `h`).
pub fn bad_utf8_log() -> Vec<u8> {
    component(&guest(
        "",
        "",
        "(if (call $hostile (local.get $event))
           (then (call $log (i32.const 2) (i32.const 64) (i32.const 3))))
         (call $ok)",
    ))
}

/// Looks up a config key that is not UTF-8 (if the event's type starts
/// with `h`).
pub fn bad_utf8_config_key() -> Vec<u8> {
    component(&guest(
        "",
        "",
        "(if (call $hostile (local.get $event))
           (then (call $get (i32.const 64) (i32.const 3) (i32.const 32))))
         (call $ok)",
    ))
}

/// Reads config `tag` (the manifest sets it) with `cabi_realloc` armed to
/// run `armed_realloc` when the host lowers the value into guest memory, if
/// the event's type starts with `h`.
pub fn realloc_in_return_path(armed_realloc: &str) -> Vec<u8> {
    component(&guest(
        "",
        armed_realloc,
        "(global.set $armed (call $hostile (local.get $event)))
         (call $get (i32.const 80) (i32.const 3) (i32.const 32))
         (global.set $armed (i32.const 0))
         (call $ok)",
    ))
}

/// Imports `evil:thing/iface`, which no host provides.
pub fn evil_import() -> Vec<u8> {
    let wit = "package evil:thing;
        interface iface { poke: func(); }
        world extra { include eventhost:handler/core@0.2.0; import iface; }";
    let wat = guest(
        r#"(import "evil:thing/iface" "poke" (func $poke))"#,
        "",
        "(call $poke) (call $ok)",
    );
    component_of_world(&wat, wit)
}

/// A guest whose data segment holds `mib` MiB, and that otherwise succeeds.
pub fn huge(mib: usize) -> Vec<u8> {
    let pages = mib * 16 + 18;
    let filler = "x".repeat(mib << 20);
    let wat = guest("", "", "(call $ok)").replace(
        "(memory (export \"memory\") 17)",
        &format!("(memory (export \"memory\") {pages})\n  (data (i32.const 1114112) \"{filler}\")"),
    );
    component(&wat)
}
