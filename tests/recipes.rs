//! Every recipe shipped in `recipes/` is valid and points editors at the schema.

use crate::support::{repo, runner};

#[test]
fn every_shipped_recipe_validates_and_declares_the_schema() {
    let mut recipes: Vec<_> = std::fs::read_dir(repo().join("recipes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    recipes.sort();
    assert!(!recipes.is_empty());
    for path in &recipes {
        let text = std::fs::read_to_string(path).unwrap();
        assert!(
            text.starts_with("#:schema ./recipe.schema.json\n"),
            "{} lacks the schema line",
            path.display()
        );
        let run = runner(&repo(), &["check", path.to_str().unwrap()], &[]);
        assert_eq!(run.code, 0, "{}: {}", path.display(), run.stderr);
        let plan = runner(&repo(), &["plan", path.to_str().unwrap()], &[]);
        assert_eq!(plan.code, 0, "{}: {}", path.display(), plan.stderr);
    }
}
