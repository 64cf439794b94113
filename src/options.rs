//! Value checks of command-line options, applied by clap when a flag is parsed, so a bad value is
//! refused before anything runs, with the accepted range in the message.

/// A group of options parsed from command-line flags (e.g. `["--model", "yolov8n.yaml"]`), with
/// every other option at its default.
pub fn from_flags<T: clap::FromArgMatches + clap::Args, S: AsRef<str>>(flags: &[S]) -> anyhow::Result<T> {
    let argv = std::iter::once("yolodistill").chain(flags.iter().map(|s| s.as_ref()));
    let matches = T::augment_args(clap::Command::new("yolodistill")).try_get_matches_from(argv).map_err(|e| anyhow::anyhow!("{e}"))?;
    T::from_arg_matches(&matches).map_err(|e| anyhow::anyhow!("{e}"))
}

/// A group of options at its command-line defaults: the clap attributes are the one place a
/// default is written.
pub fn defaults<T: clap::FromArgMatches + clap::Args>() -> T {
    from_flags::<T, &str>(&[]).expect("every option of the group has a default")
}

fn number<T: std::str::FromStr>(s: &str) -> Result<T, String> {
    s.trim().parse::<T>().map_err(|_| format!("'{s}' is not a number"))
}

/// A number that `ok` accepts; otherwise "must be `range`" with the value.
fn checked<T: std::str::FromStr + std::fmt::Display + Copy>(s: &str, ok: impl Fn(T) -> bool, range: &str) -> Result<T, String> {
    let v = number::<T>(s)?;
    if ok(v) {
        Ok(v)
    } else {
        Err(format!("must be {range}, got {v}"))
    }
}

/// The float type of half-precision inference: `--half` is f16 (Ultralytics' `half=True`),
/// `--half bf16` the wider-ranged bfloat16.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Half {
    F16,
    Bf16,
}

impl Half {
    pub fn dtype(self) -> burn::tensor::DType {
        match self {
            Half::F16 => burn::tensor::DType::F16,
            Half::Bf16 => burn::tensor::DType::BF16,
        }
    }

    /// The value `--half` takes for it (clap's name of the variant).
    pub fn name(self) -> String {
        clap::ValueEnum::to_possible_value(&self).map(|v| v.get_name().to_string()).unwrap_or_default()
    }
}

/// Mixed precision in training (Ultralytics' `amp`): which arithmetic the convolutions' matrix
/// products use, forward and backward, in the student's step and the teacher's forward
/// (validation stays f32). `true` is bf16 where the CPU has bf16 arithmetic (AVX512-BF16) and f32
/// elsewhere; `bf16` asks for it on any CPU (emulated without AVX512-BF16: the same numbers at
/// about f32's cost, for accuracy checks); `false`/`fp32` is f32, the default until bf16's speed is measured on a CPU
/// that has it (Ultralytics' default `true` trains in f32 on a CPU too).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Amp {
    #[default]
    #[serde(rename = "fp32")]
    Fp32,
    #[serde(rename = "bf16")]
    Bf16,
    #[serde(rename = "true")]
    Auto,
}

/// `--amp`'s values, as Ultralytics spells them (any case).
pub fn amp(s: &str) -> Result<Amp, String> {
    match s.to_ascii_lowercase().as_str() {
        "true" => Ok(Amp::Auto),
        "false" | "fp32" => Ok(Amp::Fp32),
        "bf16" => Ok(Amp::Bf16),
        "fp16" => Err("fp16 needs a GPU's half arithmetic; on a CPU use bf16 (or true: bf16 where the CPU has it)".into()),
        _ => Err(format!("must be true, false, fp32 or bf16, got {s:?}")),
    }
}

impl Amp {
    /// The arithmetic it means on this CPU.
    pub fn arithmetic(self) -> crate::kernels::Arithmetic {
        use crate::kernels::Arithmetic;
        match self {
            Amp::Fp32 => Arithmetic::F32,
            Amp::Bf16 => Arithmetic::Bf16,
            Amp::Auto if crate::kernels::bf16::native() => Arithmetic::Bf16,
            Amp::Auto => Arithmetic::F32,
        }
    }

    /// What a run with it should be told before it starts (bf16 without native arithmetic, or on
    /// a device our CPU kernels do not serve).
    pub fn warning(self, cpu: bool) -> Option<String> {
        if self == Amp::Fp32 {
            return None;
        }
        if !cpu {
            return Some("--amp applies to the CPU's convolutions; on this device training stays f32".into());
        }
        (self == Amp::Bf16 && !crate::kernels::bf16::native()).then(|| {
            "--amp bf16: this CPU has no bf16 arithmetic (AVX512-BF16), so it is emulated: the same numbers \
             at about f32's cost, without bf16's speed (use it to check accuracy, or --amp true for bf16 only where it is native)"
                .into()
        })
    }
}

/// An integer of at least 1.
pub fn at_least_one(s: &str) -> Result<usize, String> {
    match number::<usize>(s)? {
        0 => Err("must be at least 1".into()),
        n => Ok(n),
    }
}

/// An image size in 32..=8192 pixels.
pub fn image_size(s: &str) -> Result<usize, String> {
    checked(s, |n: usize| (32..=8192).contains(&n), "in 32..=8192")
}

/// `imgsz` rounded up to a multiple of the largest stride of our detection heads (32), with
/// a warning when it changes, as Ultralytics does.
pub fn stride_multiple(imgsz: usize) -> usize {
    let fitted = fit_stride(imgsz);
    if fitted != imgsz {
        eprintln!("warning: --imgsz {imgsz} must be a multiple of the stride {STRIDE}; using {fitted}");
    }
    fitted
}

/// The largest stride of our detection heads.
const STRIDE: usize = 32;

/// `imgsz` rounded up to a multiple of the stride, silently (see [`stride_multiple`]).
pub fn fit_stride(imgsz: usize) -> usize {
    imgsz.div_ceil(STRIDE) * STRIDE
}

/// Inference size when neither `--imgsz` nor the model file gives one (Ultralytics' default).
pub const DEFAULT_IMGSZ: usize = 640;

/// The size `predict`, `val` and `export` run at: `--imgsz`, else the size the model was
/// trained at (as Ultralytics takes it from the checkpoint), else 640; rounded up to the stride.
pub fn inference_size(flag: Option<usize>, trained: Option<usize>) -> usize {
    stride_multiple(flag.or(trained).unwrap_or(DEFAULT_IMGSZ))
}

/// A finite number of 0 or more.
pub fn non_negative(s: &str) -> Result<f64, String> {
    checked(s, |v: f64| v.is_finite() && v >= 0.0, "a finite number of 0 or more")
}

/// A finite number of 0 or more, as f32.
pub fn non_negative_f32(s: &str) -> Result<f32, String> {
    non_negative(s).map(|v| v as f32)
}

/// A finite number above 0.
pub fn positive_f32(s: &str) -> Result<f32, String> {
    checked(s, |v: f32| v.is_finite() && v > 0.0, "a finite number above 0")
}

/// A share in (0, 1].
pub fn share(s: &str) -> Result<f64, String> {
    checked(s, |v: f64| v > 0.0 && v <= 1.0, "in (0, 1]")
}

/// A probability or threshold in [0, 1].
pub fn unit(s: &str) -> Result<f32, String> {
    checked(s, |v: f32| (0.0..=1.0).contains(&v), "in [0, 1]")
}

/// A confidence strictly between 0 and 1.
pub fn open_unit(s: &str) -> Result<f32, String> {
    checked(s, |v: f32| v > 0.0 && v < 1.0, "in (0, 1)")
}

/// Seeds of paired runs, each a separate pair: `0,1,2`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seeds(pub Vec<u64>);

/// `0,1,2` → seeds; a seed given twice would count one pair as two independent ones.
pub fn seeds(s: &str) -> Result<Seeds, String> {
    let mut out: Vec<u64> = Vec::new();
    for x in s.split(',').map(str::trim) {
        let seed = x.parse::<u64>().map_err(|_| format!("'{x}' is not a seed (a whole number of 0 or more)"))?;
        if out.contains(&seed) {
            return Err(format!("seed {seed} is given twice: each seed is one independent pair"));
        }
        out.push(seed);
    }
    Ok(Seeds(out))
}

/// Shares in (0, 1], each different, in increasing order: `0.1,0.25,1`.
#[derive(Clone, Debug, PartialEq)]
pub struct Shares(pub Vec<f64>);

/// `0.25,0.1,1` → shares, sorted; each in (0, 1] and given once.
pub fn shares(s: &str) -> Result<Shares, String> {
    let mut out: Vec<f64> = s.split(',').map(|x| share(x.trim()).map_err(|e| format!("'{}': {e}", x.trim()))).collect::<Result<_, _>>()?;
    out.sort_by(f64::total_cmp);
    if let Some(w) = out.windows(2).find(|w| w[0] == w[1]) {
        return Err(format!("{} is given twice", w[0]));
    }
    Ok(Shares(out))
}

impl std::fmt::Display for Seeds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s: Vec<String> = self.0.iter().map(u64::to_string).collect();
        write!(f, "{}", s.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_enforced_and_named() {
        assert_eq!(at_least_one("3"), Ok(3));
        assert!(at_least_one("0").unwrap_err().contains("at least 1"));
        assert!(at_least_one("x").unwrap_err().contains("not a number"));
        assert!(non_negative("-1").is_err() && non_negative("NaN").is_err() && non_negative("inf").is_err());
        assert_eq!(non_negative("0"), Ok(0.0));
        assert!(positive_f32("0").is_err() && positive_f32("0.5").is_ok());
        assert!(share("0").is_err() && share("1").is_ok() && share("1.5").is_err());
        assert!(unit("NaN").is_err() && unit("0").is_ok() && unit("1").is_ok() && unit("1.01").is_err());
        assert!(image_size("31").is_err() && image_size("8193").is_err() && image_size("65") == Ok(65));
        assert_eq!((stride_multiple(65), stride_multiple(64), stride_multiple(100)), (96, 64, 128));
        assert!(open_unit("0").is_err() && open_unit("1").is_err() && open_unit("0.5").is_ok());
        assert_eq!(seeds(" 0, 2,1"), Ok(Seeds(vec![0, 2, 1])));
        assert!(seeds("0,0").unwrap_err().contains("seed 0 is given twice"));
        assert!(seeds("").unwrap_err().contains("not a seed") && seeds("1,-1").is_err());
        assert_eq!(shares("1, 0.1,0.25"), Ok(Shares(vec![0.1, 0.25, 1.0])));
        assert!(shares("0.1,0.10").unwrap_err().contains("0.1 is given twice") && shares("0,1").unwrap_err().contains("(0, 1]"));
    }
}
