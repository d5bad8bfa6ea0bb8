//! VTAB-1k split lists: one `images/<split>/000123.jpg <label>` per line, the path relative to the
//! task folder, the label 0-based, separated by whitespace. Blank lines are ignored.

use std::path::{Path, PathBuf};

use super::DataError;
use super::error::read_file;

/// Reads a list file. Paths resolve against `task_dir`; labels must lie in `[0, classes)`.
/// Every malformed line and out-of-range label is reported, each with the file and line number.
pub fn read_list(
    path: &Path,
    task_dir: &Path,
    task: &str,
    classes: usize,
) -> Result<Vec<(PathBuf, u32)>, DataError> {
    let bytes = read_file(path, "VTAB-1k list file")?;
    let text = String::from_utf8(bytes).map_err(|e| DataError::BadLine {
        path: path.to_owned(),
        line: line_of(&e.as_bytes()[..e.utf8_error().valid_up_to()]),
        message: "the list is not UTF-8 text".into(),
    })?;
    let mut entries = Vec::new();
    let mut problems = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let fields: Vec<&str> = line.split_whitespace().collect();
        let bad = |message: String| DataError::BadLine { path: path.to_owned(), line: line_no, message };
        match fields[..] {
            [] => {}
            [image, label] => match label.parse::<u64>() {
                Ok(label) if label < classes as u64 => entries.push((task_dir.join(image), label as u32)),
                Ok(label) => problems.push(DataError::LabelOutOfRange {
                    at: format!("{}:{line_no}", path.display()),
                    label,
                    classes,
                    task: task.to_owned(),
                }),
                Err(_) => problems.push(bad(format!(
                    "the label \"{label}\" is not a non-negative integer (expected `<image path> <label>`)"
                ))),
            },
            _ => problems.push(bad(format!(
                "expected `<image path> <label>` (two fields), found {} field(s): \"{}\"",
                fields.len(),
                line.trim()
            ))),
        }
    }
    DataError::collect(problems)?;
    if entries.is_empty() {
        return Err(DataError::Empty {
            what: "VTAB-1k list file lists no images".into(),
            path: path.to_owned(),
        });
    }
    Ok(entries)
}

/// The 1-based line on which the byte after `prefix` lies.
fn line_of(prefix: &[u8]) -> usize {
    prefix.iter().filter(|&&b| b == b'\n').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train800.txt");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn reads_paths_relative_to_the_task_and_skips_blank_lines() {
        let (dir, path) = list("images/train800/000000.jpg 3\n\n  images/train800/000001.jpg\t0  \r\n");
        let entries = read_list(&path, dir.path(), "dtd", 47).unwrap();
        assert_eq!(
            entries,
            [
                (dir.path().join("images/train800/000000.jpg"), 3),
                (dir.path().join("images/train800/000001.jpg"), 0)
            ]
        );
    }

    #[test]
    fn every_bad_line_is_reported_with_file_and_line() {
        let (dir, path) = list("a.jpg 1\nb.jpg\nc.jpg x\nd.jpg 1 2\ne.jpg 10\n");
        let e = read_list(&path, dir.path(), "svhn", 10).unwrap_err().to_string();
        let file = path.display();
        for expected in [
            format!("{file}:2: expected `<image path> <label>` (two fields), found 1 field(s): \"b.jpg\""),
            format!("{file}:3: the label \"x\" is not a non-negative integer"),
            format!("{file}:4: expected `<image path> <label>` (two fields), found 3 field(s)"),
            format!("{file}:5: label 10 is out of range: svhn has 10 classes (labels 0 to 9)"),
        ] {
            assert!(e.contains(&expected), "missing {expected:?} in:\n{e}");
        }
        assert!(e.starts_with("4 problems:"), "{e}");
    }

    #[test]
    fn missing_empty_and_binary_lists_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let e = read_list(&dir.path().join("test.txt"), dir.path(), "dtd", 47).unwrap_err();
        assert!(matches!(e, DataError::Missing { .. }), "{e}");
        assert!(e.to_string().starts_with("VTAB-1k list file not found: "), "{e}");
        let (dir, path) = list("\n  \n");
        let e = read_list(&path, dir.path(), "dtd", 47).unwrap_err().to_string();
        assert!(e.contains("lists no images") && e.contains("train800.txt"), "{e}");
        std::fs::write(&path, b"a.jpg 1\n\xff\xfe 2\n").unwrap();
        let e = read_list(&path, dir.path(), "dtd", 47).unwrap_err().to_string();
        assert!(e.contains("train800.txt:2: the list is not UTF-8"), "{e}");
    }
}
