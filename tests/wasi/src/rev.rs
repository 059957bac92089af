// A WASI command in Rust: reverses each word of stdin; exits with argv[1].
use std::io::Read;
fn main() {
    let mut input = String::new();
    std::io::stdin().read_to_string(&mut input).unwrap();
    let words: Vec<String> = input.split_whitespace().map(|w| w.chars().rev().collect()).collect();
    println!("{}", words.join(" "));
    eprintln!("args={:?} env={}", std::env::args().skip(1).collect::<Vec<_>>(), std::env::vars().count());
    std::process::exit(std::env::args().nth(1).map_or(0, |a| a.parse().unwrap()));
}
