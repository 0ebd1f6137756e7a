//! Start order of services: a topological sort of the `depends_on` graph
//! that keeps the declaration order where dependencies allow it, and names
//! the services of a cycle when there is one.

use std::collections::HashMap;

/// A dependency graph that has no start order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    /// A service names a dependency that is not declared.
    #[error("service {service:?} depends on {dependency:?}, which is not declared")]
    UnknownDependency { service: String, dependency: String },
    /// Two services have the same name.
    #[error("service {0:?} is declared twice")]
    Duplicate(String),
    /// The services depend on each other in a circle. Each service of the
    /// list depends on the next, and the first is repeated at the end.
    #[error(
        "dependency cycle: {} (each service depends on the next); remove one of these depends_on entries",
        .0.join(" -> ")
    )]
    Cycle(Vec<String>),
}

/// Returns the indices of `services` (name, dependencies) in an order where
/// every service comes after all of its dependencies. Among services whose
/// dependencies are satisfied, the one declared first goes first.
pub fn start_order(services: &[(&str, &[String])]) -> Result<Vec<usize>, OrderError> {
    let mut index_of = HashMap::new();
    for (index, (name, _)) in services.iter().enumerate() {
        if index_of.insert(*name, index).is_some() {
            return Err(OrderError::Duplicate(name.to_string()));
        }
    }

    let mut dependencies: Vec<Vec<usize>> = Vec::with_capacity(services.len());
    for (name, depends_on) in services {
        let mut resolved = Vec::new();
        for dependency in depends_on.iter() {
            let Some(&index) = index_of.get(dependency.as_str()) else {
                return Err(OrderError::UnknownDependency {
                    service: name.to_string(),
                    dependency: dependency.clone(),
                });
            };
            resolved.push(index);
        }
        dependencies.push(resolved);
    }

    // Kahn's algorithm, scanning in declaration order each round. The graphs
    // are a few dozen services, so the quadratic scan costs nothing.
    let mut placed = vec![false; services.len()];
    let mut order = Vec::with_capacity(services.len());
    while order.len() < services.len() {
        let next = (0..services.len())
            .find(|&index| !placed[index] && dependencies[index].iter().all(|&d| placed[d]));
        match next {
            Some(index) => {
                placed[index] = true;
                order.push(index);
            }
            None => {
                let cycle = find_cycle(&dependencies, &placed);
                let names = cycle.iter().map(|&index| services[index].0.to_string()).collect();
                return Err(OrderError::Cycle(names));
            }
        }
    }
    Ok(order)
}

/// Follows unplaced dependencies from the first unplaced service until a
/// service repeats, and returns the loop with its first service repeated at
/// the end. Every unplaced service has an unplaced dependency, so the walk
/// always ends in a loop.
fn find_cycle(dependencies: &[Vec<usize>], placed: &[bool]) -> Vec<usize> {
    let Some(start) = (0..placed.len()).find(|&index| !placed[index]) else {
        return Vec::new();
    };
    let mut path = vec![start];
    let mut current = start;
    loop {
        let Some(&next) = dependencies[current].iter().find(|&&d| !placed[d]) else {
            return path;
        };
        if let Some(position) = path.iter().position(|&index| index == next) {
            let mut cycle = path[position..].to_vec();
            cycle.push(next);
            return cycle;
        }
        path.push(next);
        current = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deps(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn order_keeps_declaration_order_without_dependencies() {
        let none = deps(&[]);
        let services = [("a", none.as_slice()), ("b", none.as_slice()), ("c", none.as_slice())];
        assert_eq!(start_order(&services).unwrap(), vec![0, 1, 2]);
    }

    #[test]
    fn order_puts_dependencies_first() {
        let none = deps(&[]);
        let on_db = deps(&["db"]);
        let on_web = deps(&["web", "db"]);
        let services = [
            ("proxy", on_web.as_slice()),
            ("web", on_db.as_slice()),
            ("db", none.as_slice()),
        ];
        assert_eq!(start_order(&services).unwrap(), vec![2, 1, 0]);
    }

    #[test]
    fn order_rejects_unknown_dependency() {
        let on_ghost = deps(&["ghost"]);
        let services = [("web", on_ghost.as_slice())];
        let error = start_order(&services).unwrap_err();
        assert_eq!(
            error,
            OrderError::UnknownDependency {
                service: "web".into(),
                dependency: "ghost".into()
            }
        );
    }

    #[test]
    fn order_rejects_duplicate_names() {
        let none = deps(&[]);
        let services = [("web", none.as_slice()), ("web", none.as_slice())];
        assert_eq!(start_order(&services).unwrap_err(), OrderError::Duplicate("web".into()));
    }

    #[test]
    fn cycle_is_named_in_dependency_order() {
        let none = deps(&[]);
        let on_b = deps(&["b"]);
        let on_c = deps(&["c"]);
        let on_a = deps(&["a"]);
        let services = [
            ("root", none.as_slice()),
            ("a", on_b.as_slice()),
            ("b", on_c.as_slice()),
            ("c", on_a.as_slice()),
        ];
        let error = start_order(&services).unwrap_err();
        assert_eq!(error, OrderError::Cycle(deps(&["a", "b", "c", "a"])));
        assert_eq!(
            error.to_string(),
            "dependency cycle: a -> b -> c -> a (each service depends on the next); remove one of these depends_on entries"
        );
    }

    #[test]
    fn self_dependency_is_a_cycle() {
        let on_self = deps(&["a"]);
        let services = [("a", on_self.as_slice())];
        assert_eq!(start_order(&services).unwrap_err(), OrderError::Cycle(deps(&["a", "a"])));
    }

    #[test]
    fn service_behind_cycle_does_not_hide_it() {
        let on_x = deps(&["x"]);
        let on_y = deps(&["y"]);
        let services = [("late", on_x.as_slice()), ("x", on_y.as_slice()), ("y", on_x.as_slice())];
        let error = start_order(&services).unwrap_err();
        assert_eq!(error, OrderError::Cycle(deps(&["x", "y", "x"])));
    }
}
