//! `/file print`, `/file add` and `/file remove`.

use super::*;

impl Engine {
    pub(super) fn file_entries(&self, st: &State) -> Vec<Entry> {
        let mut files: Vec<&FileEntry> = st.files.iter().collect();
        files.sort_by_key(|f| f.id);
        files
            .into_iter()
            .map(|f| file_entry(f, self.local(f.last_modified)))
            .collect()
    }

    pub(super) fn file_print(&self, inv: &Invocation) -> Result<String, CliError> {
        let terse = self.print_style(inv)?;
        let st = lock(&self.state);
        let entries = self.filter(self.file_entries(&st), inv.filter.as_deref(), FILE_KEYS)?;
        Ok(format::file_list(&entries, self.layout(terse)))
    }

    /// `/file add name=DIR type=directory` (RouterOS 7 documents it; files are not simulated).
    pub(super) fn file_add(&self, inv: &Invocation) -> Result<String, CliError> {
        inv.only_args(&["name", "type"])?;
        no_positional(inv)?;
        match inv.text("type") {
            Some("directory") => {}
            Some("file") | None => return Err(failure("only type=directory is simulated")),
            Some(_) => return Err(CliError::NoMatch { arg: "type".into() }),
        }
        let name = inv
            .text("name")
            .ok_or_else(|| failure("name not specified"))?;
        let path = absolute(name);
        self.check_path(&format!("{path}/x"))?;
        let mut st = lock(&self.state);
        if st.file(&path).is_some() {
            return Err(failure("file already exists"));
        }
        if let Some(dd) = &self.cfg.data_dir {
            dd.create_dir(&path)
                .map_err(|e| failure(format!("could not create directory: {e}")))?;
        }
        let now = self.now();
        st.put_dir(&path, now);
        self.persist(&st);
        Ok(String::new())
    }

    pub(super) fn file_remove(&self, inv: &Invocation) -> Result<String, CliError> {
        no_named(inv)?;
        if inv.positional.is_empty() {
            return Err(failure("no item specified"));
        }
        let mut st = lock(&self.state);
        let mut paths = Vec::new();
        for p in &inv.positional {
            match &p.value {
                Value::Find(conds) => {
                    for e in self.filter(self.file_entries(&st), Some(conds), FILE_KEYS)? {
                        if let Some(n) = e.get("name") {
                            paths.push(absolute(&n.raw()));
                        }
                    }
                }
                Value::Text(names) => {
                    for n in names.split(',') {
                        let path = absolute(n);
                        if st.file(&path).is_none() {
                            return Err(failure("no such item"));
                        }
                        paths.push(path);
                    }
                }
            }
        }
        for path in paths {
            for f in st.remove_file(&path) {
                if let Some(dd) = &self.cfg.data_dir {
                    dd.remove(&f.path)
                        .map_err(|e| failure(format!("could not remove file: {e}")))?;
                }
            }
        }
        self.persist(&st);
        Ok(String::new())
    }
}
