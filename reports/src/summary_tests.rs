use std::collections::BTreeMap;
use std::path::PathBuf;

use super::*;
use crate::published::PublishedRow;

fn stats(method: &str, task: &str, mean: Option<f64>, finished: u64, failed: u64) -> CellStats {
    CellStats {
        method: method.into(),
        task: task.into(),
        mean,
        std: (finished >= 2).then_some(1.0),
        finished,
        failed,
        reason: (failed > 0).then(|| "diverged at step 7".into()),
        selected_on_test: 0,
    }
}

fn costs(method: &str, params: f64, images_per_s: f64) -> MethodCosts {
    MethodCosts {
        method: method.into(),
        trainable_without_head: params,
        trainable_with_head: params + 10.0,
        adapter_bytes: Some(params * 4.0),
        peak_memory_bytes: 1e9,
        train_s: 60.0,
        train_s_total: 120.0,
        images_per_s,
    }
}

fn summary(published: Option<&Published>) -> Summary {
    let tasks = vec![
        TaskColumn { name: "a".into(), group: Some(Group::Natural) },
        TaskColumn { name: "b".into(), group: Some(Group::Natural) },
        TaskColumn { name: "c".into(), group: Some(Group::Specialized) },
    ];
    let methods = ["m1", "m2", "m3"].map(String::from);
    let cells = [
        stats("m1", "a", Some(70.0), 2, 0),
        stats("m1", "b", Some(80.0), 2, 0),
        stats("m1", "c", Some(90.0), 2, 0),
        stats("m2", "a", Some(72.0), 1, 1),
        stats("m2", "b", Some(78.0), 2, 0),
        stats("m2", "c", None, 0, 2),
        stats("m3", "b", Some(85.0), 1, 0),
        stats("m3", "c", Some(95.0), 1, 0),
    ];
    Summary::new(tasks, &methods, &cells, &[costs("m1", 100.0, 500.0), costs("m2", 50.0, 300.0)], published)
}

fn value(a: &Average) -> (f64, bool) {
    match a {
        Average::Value { value, best } => (*value, *best),
        Average::Unavailable { why } => panic!("unavailable: {why}"),
    }
}

fn why(a: &Average) -> &str {
    match a {
        Average::Unavailable { why } => why,
        Average::Value { value, .. } => panic!("a value: {value}"),
    }
}

#[test]
fn group_means_and_both_averages_need_every_task() {
    let s = summary(None);
    assert_eq!(s.groups, [Group::Natural, Group::Specialized]);
    assert!(s.several_groups());
    let m1 = &s.methods[0];
    assert_eq!(value(&m1.group_means[0]).0, 75.0);
    assert_eq!(value(&m1.group_means[1]).0, 90.0);
    assert_eq!(value(&m1.mean_of_group_means).0, 82.5);
    assert_eq!(value(&m1.mean_of_tasks).0, 80.0);
    assert_eq!(m1.headline(true), Some(82.5));
    assert_eq!(m1.headline(false), Some(80.0));

    let m2 = &s.methods[1];
    assert_eq!(value(&m2.group_means[0]).0, 75.0);
    assert_eq!(why(&m2.group_means[1]), "c failed");
    assert_eq!(why(&m2.mean_of_group_means), "no mean for the specialized group(s)");
    assert_eq!(why(&m2.mean_of_tasks), "c failed");
    assert_eq!(m2.failed_runs, (3, 6));
    assert_eq!(m2.cells[2], Cell::Failed { runs: 2, reason: "diverged at step 7".into() });

    let m3 = &s.methods[2];
    assert_eq!(m3.cells[0], Cell::Missing);
    assert_eq!(why(&m3.mean_of_tasks), "a not run");
    assert_eq!(m3.costs, vec![None; Cost::ALL.len()]);
}

#[test]
fn the_best_of_each_column_is_marked_ties_included_lone_values_not() {
    let s = summary(None);
    let best = |m: usize, t: usize| matches!(s.methods[m].cells[t], Cell::Value { best: true, .. });
    assert!(best(1, 0) && !best(0, 0), "a: m2 has 72");
    assert!(best(2, 1) && !best(0, 1) && !best(1, 1), "b: m3 has 85");
    assert!(best(2, 2) && !best(0, 2), "c: m3 has 95");
    // Natural: m1 and m2 both 75.
    assert!(value(&s.methods[0].group_means[0]).1 && value(&s.methods[1].group_means[0]).1);
    // Only m1 has a mean of group means: nothing to compare.
    assert!(!value(&s.methods[0].mean_of_group_means).1);
    // Fewest parameters (m2), most images per second (m1).
    assert_eq!(s.methods[0].best_costs, [false, false, false, true, true, true]);
    assert_eq!(s.methods[1].best_costs, [true, true, true, true, true, false]);
}

#[test]
fn published_rows_are_averaged_over_the_report_tasks_and_never_marked() {
    let published = Published {
        path: PathBuf::from("pub.csv"),
        note: vec![],
        rows: vec![PublishedRow {
            method: "P".into(),
            source: "paper".into(),
            params_m: Some(0.5),
            accuracy: BTreeMap::from([
                ("a".into(), 60.0),
                ("b".into(), 99.0),
                ("c".into(), 50.0),
                ("z".into(), 1.0),
            ]),
        }],
    };
    let s = summary(Some(&published));
    let p = &s.published[0];
    assert_eq!(p.published.as_deref(), Some("paper"));
    assert_eq!(p.cells.len(), 3);
    assert!(p.cells.iter().all(|c| matches!(c, Cell::Value { best: false, std: None, .. })));
    assert_eq!(value(&p.group_means[0]), (79.5, false));
    assert_eq!(value(&p.mean_of_group_means), (64.75, false));
    assert!((value(&p.mean_of_tasks).0 - 209.0 / 3.0).abs() < 1e-9);
    assert_eq!(p.costs[Cost::TrainableParams.index()], Some(500_000.0));
    assert!(Cost::ALL.iter().enumerate().all(|(i, c)| c.index() == i));
    assert_eq!(p.best_costs, [false; 6]);
    // The recipe's best stays the recipe's best.
    assert!(matches!(s.methods[2].cells[1], Cell::Value { best: true, .. }));
}

#[test]
fn without_groups_only_the_mean_of_tasks_exists() {
    let tasks = vec![TaskColumn { name: "shape".into(), group: None }];
    let s = Summary::new(tasks, &["m".into()], &[stats("m", "shape", Some(50.0), 1, 0)], &[], None);
    assert!(s.groups.is_empty() && !s.several_groups());
    assert_eq!(why(&s.methods[0].mean_of_group_means), "the tasks belong to no group");
    assert_eq!(value(&s.methods[0].mean_of_tasks).0, 50.0);
}

#[test]
fn best_of_compares_present_values_only() {
    assert_eq!(best_of(&[Some(1.0), None, Some(3.0)], true), [false, false, true]);
    assert_eq!(best_of(&[Some(1.0), None, Some(1.0)], false), [true, false, true]);
    assert_eq!(best_of(&[Some(1.0), None], true), [false, false]);
}
