//! Native unit tests of the parts that do not need a wasm host (`cargo test`).

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use crate::__private::{HostArg, HostResult};
use crate::{Error, IntoOutput, Output};

#[test]
fn has_brace_finds_format_strings() {
    assert!(!crate::text::has_brace("plain message"));
    assert!(crate::text::has_brace("x = {x}"));
    assert!(crate::text::has_brace("{{escaped}}"));
}

fn bail_plain() -> crate::Result<()> {
    crate::bail!("plain");
}

fn bail_capture(n: u32) -> crate::Result<()> {
    crate::bail!("n = {n}");
}

fn bail_args(n: u32) -> crate::Result<()> {
    crate::bail!("n = {}, twice {}", n, n * 2);
}

#[test]
fn bail_builds_messages() {
    assert_eq!(bail_plain().unwrap_err().message(), "plain");
    assert_eq!(bail_capture(3).unwrap_err().message(), "n = 3");
    assert_eq!(bail_args(4).unwrap_err().message(), "n = 4, twice 8");
}

#[test]
fn errors_convert() {
    let e: Error = "static".into();
    assert_eq!(e.message(), "static");
    let e: Error = String::from("owned").into();
    assert_eq!(e.message(), "owned");
    let bad = vec![0xffu8];
    let e: Error = core::str::from_utf8(&bad).unwrap_err().into();
    assert!(e.message().contains("utf-8"), "{}", e.message());
    assert_eq!(alloc::format!("{}", Error::new("shown")), "shown");
}

fn bytes_of(out: Output) -> Vec<u8> {
    match out.0 {
        crate::io::Repr::Owned(v) => v,
        crate::io::Repr::Static(s) => s.to_vec(),
    }
}

#[test]
fn outputs_convert() {
    assert_eq!(bytes_of(vec![1u8, 2].into_output().unwrap()), [1, 2]);
    assert_eq!(bytes_of(String::from("hi").into_output().unwrap()), b"hi");
    assert_eq!(bytes_of("static".into_output().unwrap()), b"static");
    assert_eq!(bytes_of(().into_output().unwrap()), b"");
    let failed: Result<Vec<u8>, &'static str> = Err("nope");
    assert_eq!(failed.into_output().err().unwrap().message(), "nope");
}

#[test]
fn host_values_convert() {
    assert_eq!(true.into_raw(), 1);
    assert_eq!(false.into_raw(), 0);
    assert_eq!(7i64.into_raw(), 7);
    unsafe {
        assert_eq!(<Option<Vec<u8>>>::from_raw(-1), None);
        assert_eq!(<Option<String>>::from_raw(-1), None);
        assert_eq!(<Option<Vec<u8>>>::from_raw(0), Some(Vec::new()));
        assert_eq!(<Vec<u8>>::from_raw(-1), Vec::<u8>::new());
        assert!(<bool>::from_raw(5));
        assert_eq!(<f64>::from_raw(1.5), 1.5);
    }
}

crate::import! {
    /// A documented import.
    fn imported_bytes(data: &[u8], text: &str, n: i64, x: f64, flag: bool) -> Option<Vec<u8>>;
    pub fn imported_unit();
}

#[test]
#[should_panic(expected = "only available inside wasm")]
fn imports_panic_outside_wasm() {
    let _ = imported_bytes(b"a", "b", 1, 2.0, true);
}

#[test]
#[should_panic(expected = "only available inside wasm")]
fn unit_imports_panic_outside_wasm() {
    imported_unit();
}

fn exported(input: &str) -> String {
    String::from(input)
}

crate::export!(exported);

#[test]
fn logging_is_a_no_op_outside_wasm() {
    crate::info!("plain");
    crate::warn!("with {}", 1);
    crate::log(crate::Level::Error, "direct");
}
