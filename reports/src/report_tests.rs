use super::*;
use crate::testing::record;
use losa_framework::data::vtab::Group;

fn records() -> Vec<RunRecord> {
    let (n, s) = (Some(Group::Natural), Some(Group::Specialized));
    vec![
        record("losa", "eurosat", s, 0, Some(0.9)),
        record("losa", "shape", None, 0, Some(0.5)),
        record("linear_probe", "cifar", n, 1, Some(0.6)),
        record("linear_probe", "cifar", n, 0, None),
        record("losa", "cifar", n, 0, Some(0.7)),
        record("linear_probe", "eurosat", s, 0, Some(0.8)),
    ]
}

fn saved(text: &str) -> SavedRecipe {
    SavedRecipe {
        path: "runs/x/recipe.toml".into(),
        text: text.into(),
        recipe: toml::from_str(text).unwrap(),
    }
}

fn order(report: &Report) -> (Vec<&str>, Vec<&str>) {
    let s = &report.summary;
    (s.methods.iter().map(|m| m.name.as_str()).collect(), s.tasks.iter().map(|t| t.name.as_str()).collect())
}

#[test]
fn without_a_recipe_methods_sort_by_name_and_vtab_tasks_by_group() {
    let report = Report::new(records(), None, None).unwrap();
    assert_eq!(order(&report), (vec!["linear_probe", "losa"], vec!["cifar", "eurosat", "shape"]));
    assert_eq!(report.summary.groups, [Group::Natural, Group::Specialized]);
    assert_eq!(report.title, "losa report");
    let runs: Vec<(&str, &str, u64)> =
        report.runs().map(|(r, m, _)| (m, r.labels.task.as_str(), r.labels.seed)).collect();
    assert_eq!(
        runs[..3],
        [("linear_probe", "cifar", 0), ("linear_probe", "cifar", 1), ("linear_probe", "eurosat", 0)]
    );
    assert_eq!(report.tables.runs.height(), 6);
    assert_eq!(report.facts()[..4], ["6 runs (1 failed)", "2 methods", "3 tasks", "seeds 0, 1"]);
    assert!(report.warnings().iter().any(|w| w.starts_with("1 of 6 runs failed")));
}

#[test]
fn a_recipe_gives_the_order_title_and_description() {
    let text = "name = \"cmp\"\ndescription = \"why\"\n[[backbones]]\nvariant = \"B/16\"\nrandom_init = 0\n\
                [[adapters]]\nkind = \"losa\"\n[[adapters]]\nkind = \"linear_probe\"\n[[adapters]]\nkind = \"full\"\n\
                [[datasets]]\nkind = \"vtab1k\"\nroot = \"v\"\ntasks = [\"eurosat\", \"cifar100\"]\n\
                [[datasets]]\nkind = \"vtab1k\"\nroot = \"w\"\ntasks = [\"eurosat\"]\n";
    let report = Report::new(records(), Some(saved(text)), None).unwrap();
    // `full` has no records and no row; eurosat (twice in the recipe) is one column; `shape` is not
    // in the recipe and comes last.
    assert_eq!(order(&report), (vec!["losa", "linear_probe"], vec!["eurosat", "cifar", "shape"]));
    assert_eq!((report.title.as_str(), report.description.as_str()), ("cmp", "why"));
    let titled = saved(&format!("{text}[report]\ntitle = \"Mine\"\n"));
    assert_eq!(Report::new(records(), Some(titled), None).unwrap().title, "Mine");
}

#[test]
fn several_backbones_name_their_rows() {
    let mut other = record("losa", "cifar", Some(Group::Natural), 0, Some(0.75));
    other.labels.backbone = "ViT-L/16".into();
    other.run_id.push('L');
    let mut records = records();
    records.push(other);
    let report = Report::new(records, None, None).unwrap();
    assert_eq!(order(&report).0, ["linear_probe · ViT-B/16", "losa · ViT-B/16", "losa · ViT-L/16"]);
}

#[test]
fn the_html_and_markdown_name_every_method_and_task() {
    let report = Report::new(records(), None, None).unwrap();
    let html = report.html().unwrap();
    let md = report.markdown();
    for name in ["linear_probe", "losa", "cifar", "eurosat", "shape"] {
        assert!(html.contains(name), "html lacks {name}");
    }
    assert!(md.contains("| linear\\_probe |") && md.contains("| losa |"), "{md}");
    assert!(md.contains("CIFAR-100") && md.contains("EuroSAT") && md.contains("shape"), "{md}");
}
