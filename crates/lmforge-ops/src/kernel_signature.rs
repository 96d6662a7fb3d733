//! The C parameter lists of lmforge's CUDA kernels, read from their sources, and the check that
//! a launch's arguments match one. A kernel's arguments travel as raw bytes in the order they
//! are pushed (cudarc's `LaunchArgs`), so a Rust launch that pushes an `i32` where the kernel
//! takes a `size_t`, a bf16 buffer where it reads f32, or one argument too few, runs anyway and
//! computes garbage from shifted bytes; nothing in the type system ties the two sides.
//!
//! So the signatures are read from the sources as the compiler sees them: build.rs (with the
//! `cuda` feature) runs the C++ preprocessor over each `src/cuda/*.cu` file with the CPU
//! emulation's header (`-DLMFORGE_CUDA_EMU`, as `tests/cuda_emulated.rs` compiles them: the
//! kernel-declaring macros expanded, `__global__` and `__launch_bounds__` spelled away),
//! [`signatures`] reads each `extern "C"` function of that file into [`Param`]s, and the table
//! is compiled into the library. Every launch (`cuda::Args`) records what each pushed argument
//! is and [`check`]s the list against the kernel's before it reaches the driver: a mismatch is
//! an error naming the kernel, the position and both types, never a run on shifted bytes.
//! Shared by build.rs (`#[path]`) and the library; the tests read the real sources.

use std::fmt;
use std::path::Path;
use std::process::Command;

/// A C scalar type a kernel parameter holds or points to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scalar {
    F32,
    Bf16,
    I32,
    U32,
    I64,
    U64,
    F64,
}

/// One kernel parameter, or one pushed argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Param {
    /// A value of the type, passed by value.
    Value(Scalar),
    /// A device address of values of the type (`const` or not).
    Ptr(Scalar),
    /// A null address for an optional buffer not given (a pushed argument only): matches any
    /// pointer parameter.
    Null,
}

impl Scalar {
    /// The type for C type words (qualifiers and the parameter's name removed), if known.
    fn of_c(words: &str) -> Option<Scalar> {
        Some(match words {
            "float" => Scalar::F32,
            "__nv_bfloat16" => Scalar::Bf16,
            "int" | "signed" | "signed int" | "int32_t" => Scalar::I32,
            "unsigned" | "unsigned int" | "uint32_t" => Scalar::U32,
            "long long" | "long long int" | "int64_t" => Scalar::I64,
            "unsigned long long" | "unsigned long long int" | "uint64_t" | "size_t" => Scalar::U64,
            "double" => Scalar::F64,
            _ => return None,
        })
    }

    fn c_name(self) -> &'static str {
        match self {
            Scalar::F32 => "float",
            Scalar::Bf16 => "__nv_bfloat16",
            Scalar::I32 => "int",
            Scalar::U32 => "unsigned",
            Scalar::I64 => "long long",
            Scalar::U64 => "unsigned long long / size_t",
            Scalar::F64 => "double",
        }
    }
}

impl fmt::Display for Param {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Param::Value(s) => write!(f, "{}", s.c_name()),
            Param::Ptr(s) => write!(f, "{}*", s.c_name()),
            Param::Null => write!(f, "a null pointer"),
        }
    }
}

impl Param {
    /// The Rust expression of this parameter, for the table build.rs writes.
    pub fn rust(self) -> String {
        match self {
            Param::Value(s) => format!("Param::Value(Scalar::{s:?})"),
            Param::Ptr(s) => format!("Param::Ptr(Scalar::{s:?})"),
            Param::Null => "Param::Null".into(),
        }
    }

    /// Whether an argument pushed as `self` fills the kernel parameter `want`.
    fn fills(self, want: Param) -> bool {
        match (want, self) {
            (Param::Ptr(_), Param::Null) => true,
            (want, got) => want == got,
        }
    }
}

/// A kernel's name and parameters, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    pub name: String,
    pub params: Vec<Param>,
}

/// Whether the arguments `pushed` for `kernel` fill its parameters `want`, position by position;
/// else what differs, first mismatch first.
pub fn check(kernel: &str, want: &[Param], pushed: &[Param]) -> Result<(), String> {
    let list = |ps: &[Param]| ps.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", ");
    if let Some(i) = want.iter().zip(pushed).position(|(&w, &p)| !p.fills(w)) {
        return Err(format!(
            "kernel {kernel}: argument {i} is {}, the kernel's parameter {i} is {} (pushed: {}; parameters: {})",
            pushed[i],
            want[i],
            list(pushed),
            list(want)
        ));
    }
    if want.len() != pushed.len() {
        return Err(format!(
            "kernel {kernel}: {} arguments pushed, the kernel takes {} (pushed: {}; parameters: {})",
            pushed.len(),
            want.len(),
            list(pushed),
            list(want)
        ));
    }
    Ok(())
}

/// The `extern "C"` functions that `source` (a file name such as `norm.cu`) defines, from the
/// preprocessor's output `text` (`c++ -E`, line markers kept: only lines marked as the file's
/// own are read, not those of the headers it includes). Macros must already be expanded;
/// `__launch_bounds__(…)` and `__attribute__((…))` between `void` and the name are skipped.
pub fn signatures(text: &str, source: &str) -> Result<Vec<Signature>, String> {
    let own = own_lines(text, source);
    if own.trim().is_empty() {
        return Err(format!("the preprocessed text has no lines of {source}"));
    }
    let tokens = tokenize(&own);
    let mut out = Vec::new();
    let mut i = 0;
    while i + 1 < tokens.len() {
        if tokens[i] != "extern" || tokens[i + 1] != "\"C\"" {
            i += 1;
            continue;
        }
        i += 2;
        // `extern "C" {` blocks declare no kernels of ours.
        if tokens.get(i).map(String::as_str) != Some("void") {
            continue;
        }
        i += 1;
        while matches!(tokens.get(i).map(String::as_str), Some("__launch_bounds__" | "__attribute__")) {
            i = skip_group(&tokens, i + 1)
                .ok_or_else(|| format!("{source}: unbalanced parentheses after a kernel's void"))?;
        }
        let name = tokens
            .get(i)
            .filter(|t| is_identifier(t))
            .ok_or_else(|| format!("{source}: no name after extern \"C\" void"))?;
        if tokens.get(i + 1).map(String::as_str) != Some("(") {
            return Err(format!("{source}: {name}: no parameter list"));
        }
        let end = skip_group(&tokens, i + 1).ok_or_else(|| format!("{source}: {name}: unbalanced parameter list"))?;
        let params = parse_params(name, &tokens[i + 2..end - 1])?;
        out.push(Signature { name: name.clone(), params });
        i = end;
    }
    Ok(out)
}

/// The signatures of every kernel the files `names` (`norm` for `dir/norm.cu`, …) define, each
/// file preprocessed by the C++ compiler `cxx` as the CPU emulation compiles it; an error names
/// the file, or a kernel two files define.
pub fn read_kernels(cxx: &str, dir: &Path, names: &[&str]) -> Result<Vec<Signature>, String> {
    let mut all: Vec<Signature> = Vec::new();
    for name in names {
        let file = format!("{name}.cu");
        let path = dir.join(&file);
        // `CXX` may carry a wrapper or flags (`ccache g++`): its first word is the program.
        let mut words = cxx.split_whitespace();
        let program = words.next().ok_or("CXX is empty: a C++ compiler reads the kernels' signatures")?;
        let out = Command::new(program)
            .args(words)
            .args(["-E", "-x", "c++", "-DLMFORGE_CUDA_EMU"])
            .arg(&path)
            .output()
            .map_err(|e| format!("{cxx} cannot run ({e}): a C++ compiler reads the kernels' signatures (set CXX)"))?;
        if !out.status.success() {
            return Err(format!("{cxx} -E {}: {}", path.display(), String::from_utf8_lossy(&out.stderr)));
        }
        let text = String::from_utf8(out.stdout).map_err(|e| format!("{cxx} -E {}: {e}", path.display()))?;
        for sig in signatures(&text, &file)? {
            if all.iter().any(|s| s.name == sig.name) {
                return Err(format!("{}: kernel {} is defined twice", path.display(), sig.name));
            }
            all.push(sig);
        }
    }
    Ok(all)
}

/// The lines of `text` that the preprocessor's line markers (`# 12 "path" flags`) attribute to
/// the file named `source`, joined.
fn own_lines(text: &str, source: &str) -> String {
    let mut own = String::new();
    let mut inside = false;
    for line in text.lines() {
        if let Some(marker) = line.strip_prefix("# ").filter(|m| m.starts_with(|c: char| c.is_ascii_digit())) {
            let file = marker.split('"').nth(1).unwrap_or("");
            inside = file == source || file.ends_with(&format!("/{source}"));
            continue;
        }
        if inside {
            own.push_str(line);
            own.push('\n');
        }
    }
    own
}

/// C tokens enough for declarations: identifiers and numbers, string literals, and single
/// punctuation characters.
fn tokenize(text: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c.is_alphanumeric() || c == '_' {
            let mut word = String::new();
            while let Some(&c) = chars.peek().filter(|c| c.is_alphanumeric() || **c == '_') {
                word.push(c);
                chars.next();
            }
            tokens.push(word);
        } else if c == '"' {
            let mut literal = String::from(chars.next().unwrap_or('"'));
            for c in chars.by_ref() {
                literal.push(c);
                if c == '"' {
                    break;
                }
            }
            tokens.push(literal);
        } else {
            tokens.push(c.to_string());
            chars.next();
        }
    }
    tokens
}

fn is_identifier(t: &str) -> bool {
    t.starts_with(|c: char| c.is_alphabetic() || c == '_') && t.chars().all(|c| c.is_alphanumeric() || c == '_')
}

/// The index past the parenthesised group that opens at `tokens[at]`, if it opens one and closes.
fn skip_group(tokens: &[String], at: usize) -> Option<usize> {
    if tokens.get(at).map(String::as_str) != Some("(") {
        return None;
    }
    let mut depth = 0usize;
    for (i, t) in tokens.iter().enumerate().skip(at) {
        match t.as_str() {
            "(" => depth += 1,
            ")" => {
                depth -= 1;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
    }
    None
}

/// The parameters of `kernel` from the tokens between its list's parentheses.
fn parse_params(kernel: &str, tokens: &[String]) -> Result<Vec<Param>, String> {
    if tokens.is_empty() || (tokens.len() == 1 && tokens[0] == "void") {
        return Ok(Vec::new());
    }
    tokens
        .split(|t| t == ",")
        .enumerate()
        .map(|(i, decl)| {
            let text = decl.join(" ");
            let bad = |why: &str| format!("kernel {kernel}: parameter {i} `{text}`: {why}");
            let stars = decl.iter().filter(|t| *t == "*").count();
            if stars > 1 || decl.iter().any(|t| matches!(t.as_str(), "&" | "[" | "(" | "<")) {
                return Err(bad("not a scalar or a pointer to one"));
            }
            let mut words: Vec<&str> = decl
                .iter()
                .map(String::as_str)
                .filter(|t| !matches!(*t, "*" | "const" | "volatile" | "__restrict__" | "__restrict"))
                .collect();
            // The last word names the parameter when the words before it still make a type.
            if words.len() > 1 && Scalar::of_c(&words[..words.len() - 1].join(" ")).is_some() {
                words.pop();
            }
            let scalar = Scalar::of_c(&words.join(" ")).ok_or_else(|| bad("a type the launch check does not know"))?;
            Ok(if stars == 1 { Param::Ptr(scalar) } else { Param::Value(scalar) })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use Param::{Null, Ptr, Value};
    use Scalar::*;

    /// `c++ -E` output: a header's lines, then the file's own (with a macro expanded onto one
    /// line, a kernel across lines with its bounds, and an `extern "C"` block).
    const PREPROCESSED: &str = r#"# 1 "src/cuda/norm.cu"
# 1 "/usr/include/stdint.h" 1 3 4
extern "C" void header_function(int x);
# 12 "src/cuda/norm.cu" 2
extern "C" {
int helper(int);
}
template <typename T> __attribute__((always_inline)) void row(const T* x) {}
extern "C" void norm_bwd_bf16(const __nv_bfloat16* x, const float* w, const __nv_bfloat16 *dy, __nv_bfloat16* __restrict__ dx, int c, float eps, size_t n, long long stride) { row(x); }
extern "C" void __launch_bounds__(4 * 32)
    adamw_all(const unsigned long long* table,
              unsigned int tensors) {
}
extern "C" void no_params() {}
"#;

    #[test]
    fn kernels_are_read_from_the_files_own_lines_with_every_parameter() {
        let sigs = signatures(PREPROCESSED, "norm.cu").unwrap();
        let names: Vec<_> = sigs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["norm_bwd_bf16", "adamw_all", "no_params"], "the header's function is not the file's");
        assert_eq!(
            sigs[0].params,
            [Ptr(Bf16), Ptr(F32), Ptr(Bf16), Ptr(Bf16), Value(I32), Value(F32), Value(U64), Value(I64)]
        );
        assert_eq!(sigs[1].params, [Ptr(U64), Value(U32)]);
        assert!(sigs[2].params.is_empty());
        assert!(signatures(PREPROCESSED, "attention.cu").unwrap_err().contains("no lines of attention.cu"));
    }

    #[test]
    fn an_unknown_parameter_type_is_an_error_naming_kernel_and_position() {
        let text = "# 1 \"x.cu\"\nextern \"C\" void k(int a, char b) {}\n";
        let err = signatures(text, "x.cu").unwrap_err();
        assert!(err.contains("kernel k: parameter 1 `char b`"), "{err}");
        let text = "# 1 \"x.cu\"\nextern \"C\" void k(float** a) {}\n";
        assert!(signatures(text, "x.cu").unwrap_err().contains("parameter 0"));
    }

    #[test]
    fn a_launch_must_push_each_parameters_kind_in_order() {
        let want = [Ptr(Bf16), Ptr(F32), Value(I32), Value(F32)];
        assert_eq!(check("k", &want, &[Ptr(Bf16), Null, Value(I32), Value(F32)]), Ok(()));
        // A size_t where the kernel takes an int shifts every later argument.
        let err = check("k", &want, &[Ptr(Bf16), Ptr(F32), Value(U64), Value(F32)]).unwrap_err();
        assert!(err.contains("argument 2 is unsigned long long / size_t, the kernel's parameter 2 is int"), "{err}");
        // The wrong buffer's element type.
        let err = check("k", &want, &[Ptr(F32), Ptr(F32), Value(I32), Value(F32)]).unwrap_err();
        assert!(err.contains("argument 0 is float*, the kernel's parameter 0 is __nv_bfloat16*"), "{err}");
        // Too few or too many.
        assert!(check("k", &want, &want[..3]).unwrap_err().contains("3 arguments pushed, the kernel takes 4"));
        let more = [&want[..], &[Value(I32)]].concat();
        assert!(check("k", &want, &more).unwrap_err().contains("5 arguments pushed"));
        // A null address fills a pointer, never a value.
        assert!(check("k", &want, &[Ptr(Bf16), Ptr(F32), Null, Value(F32)]).is_err());
    }

    /// Every kernel under src/cuda as the compiler reads it. Needs a C++ compiler (`$CXX`, else
    /// `c++`), as tests/cuda_emulated.rs does; without one the test says so and passes.
    #[test]
    fn every_kernel_of_the_sources_has_a_signature_of_known_types() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/cuda");
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".cu").map(String::from))
            .collect();
        names.sort();
        let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
        if let Err(e) = Command::new(cxx.split_whitespace().next().unwrap_or("c++")).arg("--version").output() {
            eprintln!("skipped: no C++ compiler ({cxx}: {e}); set CXX to read the kernels' signatures");
            return;
        }
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        assert_eq!(names.len(), 9, "{names:?}");
        let mut sigs = Vec::new();
        for name in &names {
            let own = read_kernels(&cxx, &dir, &[name]).unwrap();
            assert!(!own.is_empty(), "{name}.cu declares no kernel");
            sigs.extend(own);
        }
        assert_eq!(read_kernels(&cxx, &dir, &names).unwrap(), sigs, "a kernel's name is taken twice");
        let of = |n: &str| sigs.iter().find(|s| s.name == n).unwrap_or_else(|| panic!("no kernel {n}")).params.clone();
        // A macro-declared kernel, its dtype pasted into the name and the parameters' types.
        let norm_bwd = [Ptr(Bf16), Ptr(F32), Ptr(Bf16), Ptr(Bf16), Ptr(Bf16), Value(I32), Value(F32), Value(I32)];
        assert_eq!(of("norm_bwd_bf16"), norm_bwd);
        // Two macros deep (OPERANDS inside TC_FORWARD), with launch bounds.
        let operands = [Ptr(Bf16), Value(I64), Value(I64)].repeat(3);
        let rest =
            [Ptr(Bf16), Ptr(F32), Ptr(I32), Value(I32), Value(I32), Value(I32), Value(I32), Value(I32), Value(F32)];
        assert_eq!(of("attn_fwd_tc_bf16_128"), [&operands[..], &rest[..]].concat());
        assert_eq!(of("adamw_all"), [Ptr(U64), Value(I32)]);
        // Every float kernel of a dtype-generic family has its bf16 twin.
        for s in sigs.iter().filter(|s| s.name.contains("_f32")) {
            let twin = s.name.replace("_f32", "_bf16");
            assert!(sigs.iter().any(|t| t.name == twin), "{} has no {twin}", s.name);
        }
        println!("{} kernels read from {} files", sigs.len(), names.len());
    }

    #[test]
    fn the_table_build_rs_writes_is_rust() {
        assert_eq!(Ptr(Bf16).rust(), "Param::Ptr(Scalar::Bf16)");
        assert_eq!(Value(U64).rust(), "Param::Value(Scalar::U64)");
    }
}
