//! Datasets: task tables and dataset identity (decoding and batching follow in the data issue).

pub mod identity;
pub mod synthetic;
pub mod vtab;

/// Expands the task names of a recipe list with `select` (several tasks for a group name, none for
/// an unknown name), in order and without repeats; unknown names become problems at `key[i]`,
/// with the nearest of `known` suggested.
pub(crate) fn expand_names<T: PartialEq>(
    names: &[String],
    key: &[String],
    what: &str,
    known: &[&str],
    select: impl Fn(&str) -> Vec<T>,
) -> Result<Vec<T>, Vec<(Vec<String>, String)>> {
    let mut tasks = Vec::new();
    let mut problems = Vec::new();
    if names.is_empty() {
        problems.push((key.to_vec(), "no tasks given; expected task names or \"all\"".to_owned()));
    }
    for (i, name) in names.iter().enumerate() {
        let selected = select(name);
        if selected.is_empty() {
            let hint = crate::recipe::did_you_mean(name, known.iter().copied());
            let mut at = key.to_vec();
            at.push(i.to_string());
            problems.push((at, format!("unknown {what} task \"{name}\"{hint}")));
        }
        for t in selected {
            if !tasks.contains(&t) {
                tasks.push(t);
            }
        }
    }
    if problems.is_empty() { Ok(tasks) } else { Err(problems) }
}
