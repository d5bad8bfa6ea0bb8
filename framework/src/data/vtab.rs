//! The 19 VTAB-1k tasks: folder names, aliases, groups and class counts.

/// A VTAB-1k task group; reports average within groups, then over groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Group {
    /// Natural images (CIFAR, pets, ...).
    Natural,
    /// Specialised domains (medical, remote sensing).
    Specialized,
    /// Structured scene understanding (counting, distance, orientation).
    Structured,
}

impl Group {
    /// The group's name as written in recipes and reports.
    pub fn name(self) -> &'static str {
        match self {
            Group::Natural => "natural",
            Group::Specialized => "specialized",
            Group::Structured => "structured",
        }
    }
}

/// One VTAB-1k task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VtabTask {
    /// Folder name in the standard layout.
    pub name: &'static str,
    /// Other folder names in use for the same task.
    pub aliases: &'static [&'static str],
    /// Task group.
    pub group: Group,
    /// Number of classes; labels lie in [0, classes).
    pub classes: usize,
    /// Images in the test split.
    pub test_images: usize,
}

const fn task(
    name: &'static str,
    aliases: &'static [&'static str],
    group: Group,
    classes: usize,
    test_images: usize,
) -> VtabTask {
    VtabTask { name, aliases, group, classes, test_images }
}

impl VtabTask {
    /// The folder name and then its aliases.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + use<> {
        std::iter::once(self.name).chain(self.aliases.iter().copied())
    }
}

/// The tasks in the usual order (natural, specialized, structured).
pub const TASKS: [VtabTask; 19] = [
    task("cifar", &["cifar100", "cifar_100"], Group::Natural, 100, 10_000),
    task("caltech101", &[], Group::Natural, 102, 6_084),
    task("dtd", &[], Group::Natural, 47, 1_880),
    task("oxford_flowers102", &["flowers102"], Group::Natural, 102, 6_149),
    task("oxford_iiit_pet", &["oxford_pet", "pets"], Group::Natural, 37, 3_669),
    task("svhn", &[], Group::Natural, 10, 26_032),
    task("sun397", &[], Group::Natural, 397, 21_750),
    task("patch_camelyon", &[], Group::Specialized, 2, 32_768),
    task("eurosat", &[], Group::Specialized, 10, 5_400),
    task("resisc45", &[], Group::Specialized, 45, 6_300),
    task("diabetic_retinopathy", &["retinopathy"], Group::Specialized, 5, 42_670),
    task("clevr_count", &[], Group::Structured, 8, 15_000),
    task("clevr_dist", &[], Group::Structured, 6, 15_000),
    task("dmlab", &[], Group::Structured, 6, 22_735),
    task("kitti", &[], Group::Structured, 4, 711),
    task("dsprites_loc", &[], Group::Structured, 16, 73_728),
    task("dsprites_ori", &[], Group::Structured, 16, 73_728),
    task("smallnorb_azi", &[], Group::Structured, 18, 12_150),
    task("smallnorb_ele", &[], Group::Structured, 9, 12_150),
];

/// Selectors that name several tasks at once.
pub const SELECTORS: [&str; 4] = ["all", "natural", "specialized", "structured"];

/// Finds a task by folder name or alias.
pub fn find(name: &str) -> Option<&'static VtabTask> {
    TASKS.iter().find(|t| t.name == name || t.aliases.contains(&name))
}

/// Expands task names, aliases and group selectors into tasks, in recipe order, without repeats.
/// `key` is the recipe key path of the list, for the problems.
pub fn expand(
    names: &[String],
    key: &[String],
) -> Result<Vec<&'static VtabTask>, Vec<(Vec<String>, String)>> {
    let known: Vec<&str> = TASKS.iter().flat_map(VtabTask::names).chain(SELECTORS).collect();
    super::expand_names(names, key, "VTAB-1k", &known, |name| match name {
        "all" => TASKS.iter().collect(),
        "natural" | "specialized" | "structured" => TASKS.iter().filter(|t| t.group.name() == name).collect(),
        _ => find(name).into_iter().collect(),
    })
}
