//! Bounded fuzzing of every parser that reads a user's file: byte-level mutations (fixed seed)
//! of the fixture checkpoints' pickles and archives, our safetensors files, model YAMLs,
//! data.yaml and label files. Every case must end in `Ok` or an error: a panic fails the
//! test and names the case, and an abort or a hang would stop the test binary.

mod common;

use std::io::{Cursor, Read, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use yolodistill::weights::{pt, st};

/// A small deterministic generator (xorshift64*), so a failing case can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Bytes that parsers treat specially: zero, sign bits, maxima, digits, separators, opcodes.
const INTERESTING: &[u8] = b"\x00\xff\x7f\x80\x01\n\r\t :-.,[]{}0123456789()Qtlds.hqjJKMX\x8c\x94\x95";

/// One to four mutations: a byte changed, inserted or removed, a range dropped or repeated,
/// a 4-byte little-endian length replaced by an extreme, or the tail cut off.
fn mutate(src: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut b = src.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(b.len());
        match rng.below(7) {
            0 if !b.is_empty() => b[at] = rng.next() as u8,
            1 if !b.is_empty() => b[at] = INTERESTING[rng.below(INTERESTING.len())],
            2 => b.insert(at, INTERESTING[rng.below(INTERESTING.len())]),
            3 if !b.is_empty() => {
                let end = (at + 1 + rng.below(16)).min(b.len());
                b.drain(at..end);
            }
            4 if !b.is_empty() => {
                let end = (at + 1 + rng.below(64)).min(b.len());
                let piece = b[at..end].to_vec();
                b.splice(at..at, piece);
            }
            5 if b.len() >= 4 => {
                let v: u32 = [0, 1, 0x7fff_ffff, 0x8000_0000, 0xffff_ffff][rng.below(5)];
                let at = at.min(b.len() - 4);
                b[at..at + 4].copy_from_slice(&v.to_le_bytes());
            }
            6 => b.truncate(at),
            _ => {}
        }
    }
    b
}

/// Runs `parse` on `cases` mutations of `seed_input`; panics name the first failing case.
fn fuzz(name: &str, seed_input: &[u8], cases: usize, seed: u64, mut parse: impl FnMut(&[u8]) -> bool) -> usize {
    let mut rng = Rng(seed);
    let mut accepted = 0;
    for case in 0..cases {
        let input = mutate(seed_input, &mut rng);
        match catch_unwind(AssertUnwindSafe(|| parse(&input))) {
            Ok(ok) => accepted += ok as usize,
            Err(_) => panic!("{name}: case {case} (seed {seed}) panicked"),
        }
    }
    eprintln!("{name}: {cases} mutated inputs, {accepted} still accepted, none panicked");
    accepted
}

fn entry(zip: &mut zip::ZipArchive<std::fs::File>, name: &str) -> Vec<u8> {
    let mut v = Vec::new();
    zip.by_name(name).unwrap().read_to_end(&mut v).unwrap();
    v
}

/// The fixture checkpoints' pickles, alone and inside their archives (re-packed in memory,
/// so that each mutated pickle reaches the tensor reader too).
#[test]
fn checkpoint_reader_survives_mutated_pickles() {
    let Some(shared) = common::shared() else { return };
    for (i, fixture) in ["yolov8n.pt", "yolo12n.pt"].iter().enumerate() {
        let path = shared.join("fixtures").join(fixture);
        let mut zip = zip::ZipArchive::new(std::fs::File::open(&path).unwrap()).unwrap();
        let names: Vec<String> = zip.file_names().map(str::to_string).collect();
        let pkl_name = names.iter().find(|n| n.ends_with("data.pkl")).unwrap().clone();
        let pkl = entry(&mut zip, &pkl_name);
        assert!(pt::parse_model(&pkl).is_ok(), "the unmutated {fixture} must parse");
        fuzz(&format!("{fixture} pickle"), &pkl, 3000, 1 + i as u64, |b| pt::parse_model(b).is_ok());

        let others: Vec<(String, Vec<u8>)> =
            names.iter().filter(|n| **n != pkl_name).map(|n| (n.clone(), entry(&mut zip, n))).collect();
        let archive = |pkl: &[u8]| -> Vec<u8> {
            let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
            let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
            w.start_file(pkl_name.as_str(), opts).unwrap();
            w.write_all(pkl).unwrap();
            for (n, bytes) in &others {
                w.start_file(n.as_str(), opts).unwrap();
                w.write_all(bytes).unwrap();
            }
            w.finish().unwrap().into_inner()
        };
        let label = Path::new(fixture);
        assert!(pt::read_pt_from(Cursor::new(archive(&pkl)), label).is_ok());
        fuzz(&format!("{fixture} archive"), &pkl, 150, 10 + i as u64, |b| {
            pt::read_pt_from(Cursor::new(archive(b)), label).is_ok()
        });
        // and the archive's own bytes (its directory, headers and checksums)
        let whole = std::fs::read(&path).unwrap();
        fuzz(&format!("{fixture} zip"), &whole[whole.len() - 4096..], 300, 20 + i as u64, |tail| {
            let mut b = whole[..whole.len() - 4096].to_vec();
            b.extend_from_slice(tail);
            pt::read_pt_from(Cursor::new(b), label).is_ok()
        });
    }
}

/// One of our model files (header, metadata and the start of the data).
#[test]
fn safetensors_reader_survives_mutated_headers() {
    let dir = common::temp_dir("fuzz-st");
    let dev = yolodistill::default_device();
    let m = yolodistill::model::load("yolov8n.yaml", Some(3), &dev).unwrap().model;
    let path = dir.join("m.safetensors");
    yolodistill::model::save_safetensors(&m, &path, Default::default()).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert!(st::parse(&bytes, &path).is_ok());
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let head = &bytes[..8 + header_len + 256];
    fuzz("safetensors header", head, 3000, 3, |h| {
        let mut b = h.to_vec();
        b.extend_from_slice(&bytes[head.len()..]);
        st::parse(&b, &path).is_ok()
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// Model YAMLs of every family: a spec that parses is also built and run on a small image,
/// so a YAML that passes the checks never fails later in the graph.
#[test]
fn model_yaml_parser_survives_mutations() {
    use yolodistill::model::{builtin_yaml, spec, DetectionModel};
    let dev = yolodistill::default_device();
    let mut built = 0;
    for (i, name) in ["yolov8n.yaml", "yolo11n.yaml", "yolo12n.yaml", "yolov10n.yaml", "yolo26n.yaml"].iter().enumerate() {
        let (text, scale) = builtin_yaml(name).unwrap();
        fuzz(&format!("{name}"), text.as_bytes(), 1500, 30 + i as u64, |b| {
            let Ok(text) = std::str::from_utf8(b) else { return false };
            let Ok(yaml) = serde_yaml::from_str::<serde_yaml::Value>(text) else { return false };
            let Ok(spec) = spec::parse(&yaml, scale, None) else { return false };
            // build the small ones (a mutation can ask for millions of channels)
            let small = spec.layers.iter().all(|l| l.c2 <= 512 && l.repeats <= 4) && spec.nc <= 100;
            if small && built < 60 {
                built += 1;
                let m = DetectionModel::new(spec, Vec::new(), &dev).expect("a spec that parses builds");
                let x = burn::tensor::Tensor::<4>::zeros([1, 3, 64, 64], &dev);
                let _ = m.forward(x);
            }
            true
        });
    }
    assert!(built > 10, "too few mutated YAMLs were built ({built})");
}

/// data.yaml (BCCD's, with its folders present) and label files.
#[test]
fn dataset_yaml_and_label_parsers_survive_mutations() {
    let Some(shared) = common::shared() else { return };
    let path = shared.join("data/bccd/data.yaml");
    let text = std::fs::read(&path).unwrap();
    fuzz("data.yaml", &text, 3000, 4, |b| {
        let Ok(t) = std::str::from_utf8(b) else { return false };
        yolodistill::data::dataset::DataConfig::parse(t, &path).is_ok()
    });
    let labels = shared.join("data/bccd/labels/train");
    let mut files: Vec<_> = std::fs::read_dir(&labels).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let sample = std::fs::read(&files[0]).unwrap();
    fuzz("label file", &sample, 5000, 5, |b| yolodistill::data::dataset::parse_labels(b, 3).is_ok());
}

/// A pickle that nests far deeper than any stack is dropped without recursion.
#[test]
fn deeply_nested_pickles_are_refused_without_overflowing_the_stack() {
    let mut p = vec![0x80, 2, b'N'];
    p.extend(std::iter::repeat_n(0x85u8, 1_000_000)); // TUPLE1, a million times
    p.push(b'.');
    let e = pt::parse_model(&p).err().expect("not a checkpoint");
    assert!(format!("{e:#}").contains("not an Ultralytics checkpoint"), "{e:#}");
}
