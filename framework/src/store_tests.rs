use super::*;
use crate::record::RunRecord;

fn record(id: &str) -> RunRecord {
    let mut r = crate::record::tests::example();
    r.run_id = id.into();
    r
}

#[test]
fn records_are_read_from_run_folders_only_sorted_by_id() {
    let dir = tempfile::tempdir().unwrap();
    write_record(&dir.path().join("b-run"), &record("b-run")).unwrap();
    write_record(&dir.path().join("a-run"), &record("a-run")).unwrap();
    std::fs::create_dir_all(dir.path().join("cache/features")).unwrap();
    std::fs::create_dir_all(dir.path().join("report")).unwrap();
    std::fs::write(dir.path().join("report/report.html"), "<html>").unwrap();
    std::fs::create_dir_all(dir.path().join("c-run-still-going")).unwrap();
    std::fs::write(dir.path().join("notes.txt"), "a file beside the runs").unwrap();
    let records = read_records(dir.path()).unwrap();
    let ids: Vec<&str> = records.iter().map(|r| r.run_id.as_str()).collect();
    assert_eq!(ids, ["a-run", "b-run"]);
    assert_eq!(records[0], record("a-run"));
    // The atomic write leaves no temporary file behind.
    let left: Vec<_> =
        std::fs::read_dir(dir.path().join("a-run")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, [RECORD_FILE]);
}

#[test]
fn a_malformed_record_is_named_with_its_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    write_record(&dir.path().join("ok"), &record("ok")).unwrap();
    let bad = crate::record::tests::EXAMPLE.replace("\"train_s\": 120.5", "\"train_s\": \"slow\"");
    std::fs::create_dir_all(dir.path().join("bad")).unwrap();
    std::fs::write(dir.path().join("bad").join(RECORD_FILE), bad).unwrap();
    let err = read_records(dir.path()).unwrap_err().to_string();
    assert!(err.contains("bad/record.json is not a valid run record: timing.train_s:"), "{err}");
    assert!(err.contains("line 18"), "{err}");

    std::fs::write(dir.path().join("bad").join(RECORD_FILE), "{ not json").unwrap();
    let err = read_records(dir.path()).unwrap_err().to_string();
    assert!(err.contains("bad/record.json is not a valid run record") && err.contains("line 1"), "{err}");

    let percent = crate::record::tests::EXAMPLE.replace("\"top1\": 0.725", "\"top1\": 72.5");
    std::fs::write(dir.path().join("bad").join(RECORD_FILE), percent).unwrap();
    let err = read_records(dir.path()).unwrap_err().to_string();
    assert!(err.contains("accuracy[0].top1: expected a fraction in [0, 1], found 72.5"), "{err}");
}

#[test]
fn missing_empty_and_duplicated_runs_folders_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    assert!(matches!(read_records(&missing), Err(StoreError::NotFound(p)) if p == missing));
    std::fs::create_dir_all(dir.path().join("report")).unwrap();
    assert!(matches!(read_records(dir.path()), Err(StoreError::NoRecords(_))));
    write_record(&dir.path().join("one"), &record("same")).unwrap();
    write_record(&dir.path().join("two"), &record("same")).unwrap();
    let err = read_records(dir.path()).unwrap_err().to_string();
    assert!(err.contains("run id same appears twice"), "{err}");
}

#[test]
fn the_saved_recipe_reads_back_without_resolving_paths_again() {
    let dir = tempfile::tempdir().unwrap();
    assert!(read_recipe(dir.path()).unwrap().is_none());
    let src = dir.path().join("recipes/r.toml");
    std::fs::create_dir_all(src.parent().unwrap()).unwrap();
    std::fs::write(
        &src,
        "name = \"r\"\n[[backbones]]\nvariant = \"Ti/16\"\nrandom_init = 0\n[[adapters]]\nkind = \"linear_probe\"\n\
         [[datasets]]\nkind = \"synthetic\"\ntasks = [\"shape\"]\n[report]\npublished = \"pub.csv\"\n",
    )
    .unwrap();
    let recipe = crate::recipe::load(&src, &Default::default()).unwrap();
    let resolved = recipe.report.published.clone().unwrap();
    assert_eq!(resolved, dir.path().join("recipes/pub.csv"));
    let runs = dir.path().join("runs/r");
    write_recipe(&runs, &recipe).unwrap();
    let saved = read_recipe(&runs).unwrap().unwrap();
    assert_eq!(saved.recipe, recipe);
    assert_eq!(saved.recipe.report.published, Some(resolved));
    assert!(saved.text.contains("[report]"));

    std::fs::write(runs.join(RECIPE_FILE), "name = \"r\"\nbogus = 1\n").unwrap();
    let err = read_recipe(&runs).unwrap_err().to_string();
    assert!(err.contains("recipe.toml is not a valid resolved recipe") && err.contains("bogus"), "{err}");
}
