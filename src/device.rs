//! Which compute device every command uses: burn's pure-Rust CPU backend `flex` unless
//! `--device` (or `YOLODISTILL_DEVICE`) names a GPU backend compiled in with its cargo feature.

use std::cell::Cell;
use std::sync::OnceLock;

use burn::tensor::{Device, Tensor};

static SELECTED: OnceLock<Device> = OnceLock::new();

/// Names accepted by `--device`, with the cargo feature each needs.
const KNOWN: &str = "cpu (flex, always), wgpu (feature wgpu), vulkan (feature vulkan), cuda[:N] (feature cuda)";

/// The device chosen by `select_device`, else the one `YOLODISTILL_DEVICE` names, else flex.
pub fn default_device() -> Device {
    SELECTED
        .get_or_init(|| match std::env::var("YOLODISTILL_DEVICE") {
            Ok(name) if !name.is_empty() => parse(&name).unwrap_or_else(|e| {
                eprintln!("warning: YOLODISTILL_DEVICE: {e}; using the CPU (flex)");
                Device::flex()
            }),
            _ => Device::flex(),
        })
        .clone()
}

/// Whether `device` (with or without autodiff) is the CPU backend.
pub fn is_cpu(device: &Device) -> bool {
    device.clone().without_autodiff() == Device::flex()
}

/// Where a run draws its random initial weights: the CPU, whatever device it trains on, so that a
/// seed gives the same model on every device (PyTorch builds a model on the CPU and moves it).
/// Whatever is built there moves to the training device with `Module::to_device`.
pub fn init_device(device: &Device) -> Device {
    if is_cpu(device) {
        device.clone().without_autodiff()
    } else {
        Device::flex()
    }
}

thread_local! {
    static READS: Cell<usize> = const { Cell::new(0) };
}

/// A training step's values read back to the host (a GPU waits for its queue here), counted
/// per thread so that tests can show a device-resident step makes none.
pub fn read_back<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    READS.with(|r| r.set(r.get() + 1));
    t.try_into_vec_as::<f32>().expect("f32 tensor")
}

/// How many [`read_back`] calls this thread has made.
pub fn reads_so_far() -> usize {
    READS.with(Cell::get)
}

/// Sets the device for the whole process; call before any tensor is made.
pub fn select_device(name: &str) -> anyhow::Result<()> {
    let device = parse(name)?;
    if SELECTED.set(device).is_err() {
        anyhow::bail!("the device was already chosen before --device {name}");
    }
    Ok(())
}

fn parse(name: &str) -> anyhow::Result<Device> {
    let (kind, index) = match name.split_once(':') {
        Some((k, i)) => (k, Some(i.parse::<usize>().map_err(|_| anyhow::anyhow!("bad device index in {name:?}"))?)),
        None => (name, None),
    };
    match kind {
        "cpu" | "flex" => Ok(Device::flex()),
        "wgpu" => wgpu(index),
        "vulkan" => vulkan(index),
        "cuda" => cuda(index),
        _ => anyhow::bail!("unknown device {name:?}; known: {KNOWN}"),
    }
}

/// The error of a GPU name this build has no backend for.
#[allow(dead_code)]
fn not_built(kind: &str) -> anyhow::Result<Device> {
    anyhow::bail!("device {kind:?} needs the cargo feature `{kind}` (cargo build --features {kind}); this build has the CPU only")
}

/// Where GPU backends keep compiled kernels and autotune results between processes:
/// `YOLODISTILL_CACHE`, else the user cache folder (`~/.cache/yolodistill/kernels`).
#[cfg(any(feature = "wgpu", feature = "vulkan", feature = "cuda"))]
fn kernel_cache_dir() -> std::path::PathBuf {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(std::path::PathBuf::from);
    env("YOLODISTILL_CACHE")
        .or_else(|| env("XDG_CACHE_HOME").map(|c| c.join("yolodistill/kernels")))
        .or_else(|| env("HOME").map(|h| h.join(".cache/yolodistill/kernels")))
        .unwrap_or_else(|| std::env::temp_dir().join("yolodistill-kernels"))
}

/// A GPU process compiles and tunes its kernels when it first meets a shape (minutes for a
/// training run): both are kept on disk in [`kernel_cache_dir`], so the next process on the
/// machine starts in seconds. Settings a `cubecl.toml` or CUBECL_* variable gives are kept
/// otherwise. Must run before the first GPU device is made.
#[cfg(any(feature = "wgpu", feature = "vulkan", feature = "cuda"))]
fn keep_kernel_caches() {
    use burn::cubecl::config::{cache::CacheConfig, CubeClRuntimeConfig, RuntimeConfig};
    let mut config = CubeClRuntimeConfig::from_current_dir().override_from_env();
    config.compilation.cache = true;
    config.environment.path = CacheConfig::Directory(kernel_cache_dir());
    // false when a device was made before: its settings stay
    let _ = CubeClRuntimeConfig::try_set(config);
}

#[cfg(feature = "wgpu-untuned")]
fn wgpu(index: Option<usize>) -> anyhow::Result<Device> {
    // the untuned build has nothing to keep: no tuning, and cubecl keeps no compiled WGSL
    #[cfg(feature = "wgpu")]
    keep_kernel_caches();
    Ok(Device::wgpu(gpu_kind(index)))
}
#[cfg(not(feature = "wgpu-untuned"))]
fn wgpu(_: Option<usize>) -> anyhow::Result<Device> {
    not_built("wgpu")
}

#[cfg(feature = "vulkan")]
fn vulkan(index: Option<usize>) -> anyhow::Result<Device> {
    #[cfg(not(feature = "vulkan-spirv-dump"))]
    vulkan_check::check_vulkan_adapter(index)?;
    keep_kernel_caches();
    Ok(Device::vulkan(gpu_kind(index)))
}

/// The device check of `--device vulkan` (not in the dump build, which exists to see what cubecl
/// writes for a device the check refuses).
#[cfg(all(feature = "vulkan", not(feature = "vulkan-spirv-dump")))]
mod vulkan_check {
    use cubecl::wgpu::wgpu;

    /// The Vulkan extension without which cubecl 0.11.3 (burn 0.22.1) compiles every kernel that uses
    /// shared memory (matmul tiles, reductions) into invalid SPIR-V: its fallback declares the shared
    /// arrays as Workgroup variables holding a pointer (`spirv-val`: "OpInBoundsAccessChain reached
    /// non-composite type"), and lavapipe crashes in vkCreateComputePipelines
    /// (benches/results/gpu/vulkan_spirv_session23.md).
    const WORKGROUP_LAYOUT: &std::ffi::CStr = c"VK_KHR_workgroup_memory_explicit_layout";

    /// Refuses, with a clear error, the Vulkan adapter cubecl would pick for `index` when there is
    /// none (cubecl would panic) or when it lacks [`WORKGROUP_LAYOUT`] (the first shared-memory kernel
    /// would crash the process).
    pub(super) fn check_vulkan_adapter(index: Option<usize>) -> anyhow::Result<()> {
        let adapter = vulkan_adapter(index)?;
        // SAFETY: the hal adapter is only read, while `adapter` is alive.
        let has_layout = unsafe { adapter.as_hal::<wgpu::hal::api::Vulkan>() }
            .is_none_or(|hal| hal.physical_device_capabilities().supports_extension(WORKGROUP_LAYOUT));
        if !has_layout {
            anyhow::bail!(
                "the Vulkan device {:?} lacks {}, without which this build's Vulkan compiler (cubecl 0.11.3) \
                 writes invalid shaders that crash the driver; use the wgpu feature and --device wgpu on it \
                 (Vulkan through WGSL)",
                adapter.get_info().name,
                WORKGROUP_LAYOUT.to_string_lossy()
            );
        }
        Ok(())
    }

    /// The adapter cubecl picks for `index`: the index-th discrete GPU, else wgpu's high-performance
    /// choice; none is an error listing the Vulkan devices there are.
    fn vulkan_adapter(index: Option<usize>) -> anyhow::Result<wgpu::Adapter> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
            backends: wgpu::Backends::VULKAN,
            ..wgpu::InstanceDescriptor::new_without_display_handle()
        });
        let all = cubecl::future::block_on(instance.enumerate_adapters(wgpu::Backends::VULKAN));
        let adapter = match index {
            Some(i) => all.iter().filter(|a| a.get_info().device_type == wgpu::DeviceType::DiscreteGpu).nth(i).cloned(),
            None => cubecl::future::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                ..Default::default()
            }))
            .ok(),
        };
        adapter.ok_or_else(|| {
            let wanted = index.map_or("no Vulkan device".to_string(), |i| format!("no discrete GPU number {i} (vulkan:{i})"));
            let found: Vec<String> = all.iter().map(|a| format!("{:?} ({:?})", a.get_info().name, a.get_info().device_type)).collect();
            let found = if found.is_empty() { "none".to_string() } else { found.join(", ") };
            anyhow::anyhow!("{wanted} found; Vulkan devices here: {found}")
        })
    }
}

#[cfg(not(feature = "vulkan"))]
fn vulkan(_: Option<usize>) -> anyhow::Result<Device> {
    not_built("vulkan")
}

#[cfg(feature = "cuda")]
fn cuda(index: Option<usize>) -> anyhow::Result<Device> {
    keep_kernel_caches();
    Ok(Device::cuda(index.unwrap_or(0)))
}
#[cfg(not(feature = "cuda"))]
fn cuda(_: Option<usize>) -> anyhow::Result<Device> {
    not_built("cuda")
}

/// `wgpu:N` is the N-th discrete GPU; plain `wgpu` lets wgpu pick the best adapter.
#[cfg(any(feature = "wgpu-untuned", feature = "vulkan"))]
fn gpu_kind(index: Option<usize>) -> burn::tensor::DeviceKind {
    index.map(burn::tensor::DeviceKind::DiscreteGpu).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_names_parse_and_unknown_names_are_refused() {
        assert!(parse("cpu").is_ok() && parse("flex").is_ok());
        let e = parse("tpu").unwrap_err().to_string();
        assert!(e.contains("unknown device") && e.contains("cpu"), "{e}");
        assert!(parse("cuda:x").is_err());
        #[cfg(not(feature = "cuda"))]
        assert!(parse("cuda:0").unwrap_err().to_string().contains("--features cuda"));
    }
}
