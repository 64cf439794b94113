//! Data-parallel training under `mpirun` (the `mpi` feature): two ranks make the update of one
//! process that trains the two halves of each batch one after the other (`--shards 2`), and a
//! two-rank run on BCCD images learns. `.ci/run` installs Open MPI and runs these.

mod common;

/// Launched by mpirun, a build without the feature says how to get one instead of training alone.
#[cfg(not(feature = "mpi"))]
#[test]
fn without_the_feature_an_mpi_launch_is_refused() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_yolodistill"))
        .env("OMPI_COMM_WORLD_SIZE", "2")
        .args(["train", "--model", "yolov8n.yaml", "--data", "coco8.yaml"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--features mpi") && err.contains("2 processes"), "{err}");
}

#[cfg(feature = "mpi")]
mod launched {
    use super::common;
    use std::collections::BTreeMap;
    use std::path::Path;
    use std::process::Command;

    /// `yolodistill train` with `args`, under `mpirun -np ranks` when `ranks > 1`; one compute
    /// thread per process (the ranks share this machine's cores).
    fn train(ranks: usize, args: &[&str]) -> std::process::Output {
        let exe = env!("CARGO_BIN_EXE_yolodistill");
        let mut cmd = if ranks > 1 {
            let mut c = Command::new("mpirun");
            c.args(["--oversubscribe", "-np", &ranks.to_string(), "-x", "RAYON_NUM_THREADS", exe]);
            c
        } else {
            Command::new(exe)
        };
        // Open MPI refuses root without these (CI containers run as root).
        cmd.env("OMPI_ALLOW_RUN_AS_ROOT", "1").env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1").env("RAYON_NUM_THREADS", "1");
        let out = cmd.arg("train").args(args).output().expect("mpirun (Open MPI) on the PATH");
        assert!(out.status.success(), "train {args:?} on {ranks} ranks failed:\n{}", String::from_utf8_lossy(&out.stderr));
        out
    }

    /// Every tensor of a safetensors file, as f32.
    fn tensors(path: &Path) -> BTreeMap<String, Vec<f32>> {
        let bytes = std::fs::read(path).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        st.tensors()
            .into_iter()
            .filter(|(_, v)| v.dtype() == safetensors::Dtype::F32)
            .map(|(n, v)| (n, v.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()))
            .collect()
    }

    /// BatchNorm's running statistics: each rank's follow its own shard (rank 0's are saved, as
    /// DDP broadcasts rank 0's buffers), while --shards updates them once per shard.
    fn running_statistics(name: &str) -> bool {
        name.ends_with("running_mean") || name.ends_with("running_var")
    }

    /// Worst |a − b| / max(1, |b|) over the tensors but the running statistics (the two must hold
    /// the same names and sizes).
    fn worst_difference(a: &BTreeMap<String, Vec<f32>>, b: &BTreeMap<String, Vec<f32>>) -> (f32, String) {
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>(), "same tensors");
        let mut worst = (0f32, String::new());
        for (name, x) in a.iter().filter(|(n, _)| !running_statistics(n)) {
            let y = &b[name];
            assert_eq!(x.len(), y.len(), "{name}");
            for (p, q) in x.iter().zip(y) {
                let d = (p - q).abs() / q.abs().max(1.0);
                if d > worst.0 || d.is_nan() {
                    worst = (d, name.clone());
                }
            }
        }
        worst
    }

    #[test]
    fn two_ranks_make_the_update_of_two_shards_in_one_process() {
        let Some(shared) = common::shared() else { return };
        let dir = common::temp_dir("mpi-update");
        let data = common::bccd_subset(&shared, &dir, 16);
        let project = dir.join("runs");
        let (data, project) = (data.to_str().unwrap(), project.to_str().unwrap());
        // Two optimizer steps (--nbs 8: one per batch; a one-epoch run has no warm-up), then `last`
        // holds the weights, the EMA and the optimizer's state.
        let run = |ranks: usize, name: &str, shards: &str| {
            let flags = [
                "--model", "yolov8n.yaml", "--data", data, "--project", project, "--name", name, "--epochs", "1", "--max-batches", "2",
                "--imgsz", "160", "--batch", "8", "--nbs", "8", "--workers", "1", "--quiet", "--shards", shards,
            ];
            train(ranks, &flags);
            tensors(&Path::new(project).join(name).join("weights/last.safetensors"))
        };
        let ranks = run(2, "ranks", "1");
        let shards = run(1, "shards", "2");
        let whole = run(1, "whole", "1");
        assert!(ranks.len() > 900, "weights, EMA and optimizer state: {} tensors", ranks.len());
        let (d, name) = worst_difference(&ranks, &shards);
        eprintln!("2 ranks vs --shards 2: worst relative difference {d:.2e} ({name})");
        assert!(d <= 1e-5, "2 ranks vs 2 shards: {d} at {name}");
        // the comparison can fail: whole batches normalise and assign differently from halves
        let (d, name) = worst_difference(&whole, &shards);
        assert!(d > 1e-3, "whole batches should differ from halves ({d} at {name})");
        // rank 1 wrote nothing: one run folder each
        let mut runs: Vec<String> = std::fs::read_dir(project).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
        runs.sort();
        assert_eq!(runs, ["ranks", "shards", "whole"]);
    }

    /// As tests/train_e2e.rs's resume test, with two ranks: the accumulation spans the epochs'
    /// end, so `last` carries the ranks' pending gradients.
    #[test]
    fn resume_under_mpirun_is_exact() {
        let Some(shared) = common::shared() else { return };
        let dir = common::temp_dir("mpi-resume");
        let data = common::bccd_subset(&shared, &dir, 16);
        let project = dir.join("runs");
        let (data, project) = (data.to_str().unwrap(), project.to_str().unwrap());
        // 4 batches of 4 images (2 on each rank); optimizer steps after batches 1, 3, 5 and 7, so
        // batch 4 is pending when epoch 1 ends
        let run = |name: &str, extra: &[&str]| {
            let mut flags = vec![
                "--model", "yolov8n.yaml", "--data", data, "--project", project, "--name", name, "--epochs", "2", "--imgsz", "64",
                "--batch", "4", "--nbs", "8", "--warmup-epochs", "0", "--workers", "1", "--quiet",
            ];
            flags.extend(extra);
            train(2, &flags);
        };
        run("whole", &[]);
        run("cut", &["--max-batches", "4"]);
        let last = format!("{project}/cut/weights/last.safetensors");
        train(2, &["--resume", &last, "--quiet"]);
        let load = |name: &str| yolodistill::report::Results::load(&Path::new(project).join(name).join("results.csv")).unwrap();
        let (cut, whole) = (load("cut"), load("whole"));
        for c in ["train/box_loss", "train/cls_loss", "train/dfl_loss"] {
            let (c1, w1) = (cut.column(c).unwrap(), whole.column(c).unwrap());
            assert_eq!(c1.len(), 2, "{c}: {c1:?}");
            assert!((c1[1] - w1[1]).abs() <= 1e-6 * w1[1].abs(), "{c}: resumed {c1:?} vs uninterrupted {w1:?}");
        }
        let weights = |name: &str| tensors(&Path::new(project).join(name).join("weights/last.safetensors"));
        let (d, name) = worst_difference(&weights("cut"), &weights("whole"));
        assert!(d <= 1e-6, "resumed vs uninterrupted: {d} at {name}");
    }

    #[test]
    fn a_two_rank_run_learns() {
        let Some(shared) = common::shared() else { return };
        let dir = common::temp_dir("mpi-learns");
        let data = common::bccd_subset(&shared, &dir, 16);
        let project = dir.join("runs");
        // as tests/train_e2e.rs's short run: 30 epochs of 4 batches of 4 images (2 per rank)
        let flags = [
            "--model", "yolov8n.yaml", "--data", data.to_str().unwrap(), "--project", project.to_str().unwrap(), "--name", "learns",
            "--epochs", "30", "--imgsz", "160", "--batch", "4", "--nbs", "4", "--close-mosaic", "5", "--workers", "1", "--quiet",
        ];
        let out = train(2, &flags);
        let log = String::from_utf8_lossy(&out.stderr);
        assert_eq!(log.matches("epoch 30/30").count(), 1, "one rank reports:\n{log}");
        let results = yolodistill::report::Results::load(&project.join("learns/results.csv")).unwrap();
        let cls = results.column("train/cls_loss").unwrap();
        let map = results.column("metrics/mAP50(B)").unwrap();
        eprintln!("cls_loss per epoch: {cls:?}\nmAP50 per epoch: {map:?}");
        assert_eq!(cls.len(), 30);
        assert!(cls.last().unwrap() < &(cls[0] * 0.5), "classification loss should fall: {cls:?}");
        // Seed 0 ends at mAP50 0.427 on an AVX-512 Zen 4 and at 0.104 on an AVX2-only EPYC (mean
        // of the last five epochs 0.117): 30 epochs on 16 images with BatchNorm over 2 images per
        // rank are chaotic, and the two CPUs' kernels round differently (the single-process twin
        // in tests/train_e2e.rs: 0.217 and 0.192, the same code on both). The update itself is
        // pinned by `two_ranks_make_the_update_of_two_shards_in_one_process` and the exact resume;
        // this checks that learning happens: from nothing to a mAP50 no untrained model reaches.
        let last5 = map[map.len() - 5..].iter().sum::<f64>() / 5.0;
        assert!(map[0] < 0.01 && last5 > 0.05, "mAP50 should rise (mean of the last five epochs {last5}; 0.117 to 0.4 observed): {map:?}");
    }
}
