//! Ultralytics' command form, `yolodistill [detect] train model=yolov8n.yaml epochs=3`: an
//! optional task word, then the mode, then `key=value` arguments with Ultralytics' names. They
//! are rewritten into our flags before clap parses them, so both forms reach the same options,
//! checks and errors. A command line without `key=value` arguments passes unchanged.

use clap::{Arg, ArgAction, Command};

/// Ultralytics' task words; detection is implemented, segmentation in part.
const TASKS: [&str; 5] = ["detect", "segment", "classify", "pose", "obb"];

/// The modes that take segmentation models so far.
const SEGMENT_MODES: [&str; 5] = ["info", "export", "benchmark", "train", "val"];

/// Ultralytics keys whose option is written otherwise here: (key, our flag).
const RENAMED: [(&str, &str); 1] = [("distill_model", "teacher")];

/// `argv` (program name first) in our flag form.
pub fn to_flags(argv: Vec<String>, cli: &Command) -> Result<Vec<String>, String> {
    let mut rest = argv.iter().skip(1).peekable();
    let mut out: Vec<String> = argv.first().cloned().into_iter().collect();
    if rest.peek().is_some_and(|w| TASKS.contains(&w.as_str())) {
        let task = rest.next().expect("peeked");
        let mode = rest.peek().map(|m| m.as_str()).unwrap_or("");
        if task == "segment" && !SEGMENT_MODES.contains(&mode) {
            return Err(format!(
                "task 'segment' with mode '{mode}' is not supported yet: segmentation models work with {} so far",
                SEGMENT_MODES.join(", ")
            ));
        }
        if task != "detect" && task != "segment" {
            return Err(format!("task '{task}' is not supported: yolodistill trains and runs detection models (the task word 'detect')"));
        }
    }
    let Some(mode) = rest.next() else { return Ok(out) };
    out.push(mode.clone());
    let Some(command) = cli.find_subcommand(mode) else {
        out.extend(rest.cloned());
        return Ok(out); // clap names the unknown command
    };
    // a token right after a flag that takes a value is that value, whatever it holds
    let mut value_due = false;
    for token in rest {
        match token.split_once('=') {
            Some((key, value)) if !token.starts_with('-') && !value_due => out.extend(flag_of(key, value, command, cli)?),
            _ => out.push(token.clone()),
        }
        value_due = token.strip_prefix("--").is_some_and(|long| takes_value(long, command, cli));
    }
    Ok(out)
}

/// Whether the flag `--long` (without `=`) is followed by its value.
fn takes_value(long: &str, command: &Command, cli: &Command) -> bool {
    options(command, cli)
        .find(|a| a.get_long() == Some(long))
        .is_some_and(|a| matches!(a.get_action(), ArgAction::Set | ArgAction::Append) && a.get_num_args().is_none_or(|n| n.max_values() > 0))
}

/// The flag (and value) of one `key=value` argument of the command `command`.
fn flag_of(key: &str, value: &str, command: &Command, cli: &Command) -> Result<Vec<String>, String> {
    if key == "dis" {
        // Ultralytics 8.4's distillation weight: its score-weighted L2, our `sl2` method
        return Ok(vec![format!("--distill=sl2:{value}")]);
    }
    let long = RENAMED.iter().find(|(k, _)| *k == key).map_or_else(|| key.replace('_', "-"), |(_, f)| f.to_string());
    let arg = options(command, cli).find(|a| a.get_long() == Some(long.as_str()) && !a.is_hide_set());
    let Some(arg) = arg else { return Err(unknown(key, command, cli)) };
    let flag = format!("--{long}");
    let truth = match value {
        "True" | "true" => Some(true),
        "False" | "false" => Some(false),
        _ => None,
    };
    let takes_no_value = matches!(arg.get_action(), ArgAction::SetTrue);
    let value_optional = arg.get_num_args().is_some_and(|n| n.min_values() == 0);
    Ok(match (truth, takes_no_value || value_optional) {
        (Some(true), true) => vec![flag],
        (Some(false), true) => Vec::new(),
        (None, true) if takes_no_value => return Err(format!("{key}={value}: {key} is True or False")),
        // one token, so that a value such as `-1` is not read as a flag
        (Some(t), false) => vec![format!("{flag}={t}")],
        _ => vec![format!("{flag}={value}")],
    })
}

/// The options a `key=value` argument may name: the command's and the global ones.
fn options<'a>(command: &'a Command, cli: &'a Command) -> impl Iterator<Item = &'a Arg> {
    command.get_arguments().chain(cli.get_arguments().filter(|a| a.is_global_set()))
}

/// The error for an unknown key: the closest valid key of the command.
fn unknown(key: &str, command: &Command, cli: &Command) -> String {
    let keys: Vec<String> = options(command, cli)
        .filter(|a| !a.is_hide_set())
        .filter_map(|a| a.get_long())
        .filter(|l| *l != "help" && *l != "version")
        .map(|l| l.replace('-', "_"))
        .chain(RENAMED.iter().map(|(k, _)| k.to_string()))
        .chain(std::iter::once("dis".to_string()))
        .collect();
    let closest = keys.iter().min_by_key(|k| edit_distance(key, k)).cloned().unwrap_or_default();
    format!("'{key}' is not a valid key of {}; the closest is '{closest}' (see `yolodistill {} --help`)", command.get_name(), command.get_name())
}

/// Levenshtein distance of two words.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let here = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(here + 1);
            prev = here;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn flags(line: &str) -> Result<Vec<String>, String> {
        let argv = std::iter::once("yolodistill").chain(line.split_whitespace()).map(String::from).collect();
        to_flags(argv, &crate::cli::Cli::command()).map(|v| v[1..].to_vec())
    }

    #[test]
    fn ultralytics_arguments_become_our_flags() {
        assert_eq!(flags("detect train model=yolov8n.yaml epochs=3 cos_lr=True val=False").unwrap(), [
            "train", "--model=yolov8n.yaml", "--epochs=3", "--cos-lr", "--val=false"
        ]);
        assert_eq!(flags("train distill_model=t.pt dis=6 exist_ok=False device=cpu lr0=-1").unwrap(), [
            "train", "--teacher=t.pt", "--distill=sl2:6", "--device=cpu", "--lr0=-1"
        ]);
        assert_eq!(flags("predict half=True nms=False --json").unwrap(), ["predict", "--half", "--nms=false", "--json"]);
        assert_eq!(flags("val half=bf16").unwrap(), ["val", "--half=bf16"]);
        assert_eq!(flags("train --model m.yaml").unwrap(), ["train", "--model", "m.yaml"], "the flag form passes unchanged");
        assert_eq!(flags("predict --source a=b.jpg conf=0.5").unwrap(), ["predict", "--source", "a=b.jpg", "--conf=0.5"], "a flag's value stays");
        assert_eq!(edit_distance("lr", "lr0"), 1);
    }

    /// The run `train` would start from this command line (flags or `key=value` form).
    fn train_args(line: &str) -> serde_json::Value {
        use clap::Parser;
        let argv = flags(line).unwrap();
        match crate::cli::Cli::try_parse_from(std::iter::once("yolodistill".to_string()).chain(argv)).unwrap().command {
            crate::cli::Command::Train(t) => serde_json::to_value(t.run).unwrap(),
            _ => unreachable!("a train command"),
        }
    }

    /// Every training option that has an Ultralytics name gives the same run (the same
    /// args.yaml) in both forms, each at a value other than its default.
    #[test]
    fn both_forms_of_every_ultralytics_training_option_give_the_same_run() {
        let cases = [
            ("epochs=7", "--epochs 7"), ("imgsz=320", "--imgsz 320"), ("batch=8", "--batch 8"), ("optimizer=SGD", "--optimizer sgd"),
            ("lr0=0.02", "--lr0 0.02"), ("lrf=0.1", "--lrf 0.1"), ("momentum=0.9", "--momentum 0.9"), ("weight_decay=0.001", "--weight-decay 0.001"),
            ("warmup_epochs=1", "--warmup-epochs 1"), ("warmup_momentum=0.5", "--warmup-momentum 0.5"), ("warmup_bias_lr=0.05", "--warmup-bias-lr 0.05"),
            ("cos_lr=True", "--cos-lr"), ("close_mosaic=3", "--close-mosaic 3"), ("seed=5", "--seed 5"), ("project=p", "--project p"),
            ("name=n", "--name n"), ("exist_ok=True", "--exist-ok"), ("workers=1", "--workers 1"), ("patience=9", "--patience 9"), ("nbs=32", "--nbs 32"),
            ("box=5", "--box 5"), ("cls=1", "--cls 1"), ("dfl=2", "--dfl 2"), ("hsv_h=0.1", "--hsv-h 0.1"), ("hsv_s=0.5", "--hsv-s 0.5"),
            ("hsv_v=0.3", "--hsv-v 0.3"), ("degrees=10", "--degrees 10"), ("translate=0.2", "--translate 0.2"), ("scale=0.3", "--scale 0.3"),
            ("shear=2", "--shear 2"), ("perspective=0.001", "--perspective 0.001"), ("flipud=0.5", "--flipud 0.5"), ("fliplr=0.2", "--fliplr 0.2"),
            ("mosaic=0.5", "--mosaic 0.5"), ("mixup=0.1", "--mixup 0.1"), ("val=False", "--val false"), ("fraction=0.5", "--fraction 0.5"),
            ("distill_model=t.pt dis=6", "--teacher t.pt --distill sl2:6"), ("resume=r/last.safetensors", "--resume r/last.safetensors"),
        ];
        let base = train_args("train model=m.yaml data=d.yaml");
        for (kv, flag) in cases {
            let ours = train_args(&format!("detect train model=m.yaml data=d.yaml {kv}"));
            assert_eq!(ours, train_args(&format!("train --model m.yaml --data d.yaml {flag}")), "{kv}");
            assert_ne!(ours, base, "{kv} changed nothing");
        }
    }

    #[test]
    fn unknown_keys_and_tasks_are_refused_clearly() {
        let e = flags("train lr=0.01").unwrap_err();
        assert!(e.contains("'lr' is not a valid key of train") && e.contains("the closest is 'lr0'"), "{e}");
        let e = flags("predict max_dets=10").unwrap_err();
        assert!(e.contains("the closest is 'max_det'"), "{e}");
        assert!(flags("segment predict model=x").unwrap_err().contains("task 'segment' with mode 'predict' is not supported yet"));
        assert_eq!(flags("segment train model=x").unwrap(), ["train", "--model=x"]);
        assert!(flags("pose train model=x").unwrap_err().contains("task 'pose' is not supported"));
        assert_eq!(flags("segment export model=m-seg.pt format=onnx").unwrap(), ["export", "--model=m-seg.pt", "--format=onnx"]);
        assert!(flags("train cos_lr=maybe").unwrap_err().contains("cos_lr is True or False"));
    }
}
