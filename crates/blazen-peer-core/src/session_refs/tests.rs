use super::*;

fn owned_by(run: Uuid, parent: Option<Uuid>) -> RefOwner {
    RefOwner {
        run: Some(run),
        parent,
    }
}

#[test]
fn finishing_a_run_purges_its_context_refs_and_lists_the_others() {
    let registry = SessionRefRegistry::default();
    let run = Uuid::new_v4();
    let other = Uuid::new_v4();
    let dropped = registry.insert(
        Arc::new(vec![1u8]),
        "bytes",
        RefLifetime::UntilContextDrop,
        owned_by(run, None),
    );
    let kept = registry.insert(
        Arc::new(vec![2u8; 3]),
        "json",
        RefLifetime::UntilParentFinish,
        owned_by(run, None),
    );
    let explicit = registry.insert(
        Arc::new(vec![3u8]),
        "bytes",
        RefLifetime::UntilExplicitDrop,
        owned_by(run, None),
    );
    let foreign = registry.insert(
        Arc::new(vec![4u8]),
        "bytes",
        RefLifetime::UntilExplicitDrop,
        owned_by(other, None),
    );

    let outliving = registry.finish_run(run, false, "node-b");
    assert_eq!(
        outliving
            .keys()
            .copied()
            .collect::<std::collections::BTreeSet<_>>(),
        [kept, explicit].into()
    );
    assert_eq!(outliving[&kept].type_tag, "json");
    assert_eq!(outliving[&kept].origin_node_id, "node-b");
    assert!(registry.get(&dropped).is_none());
    assert!(registry.get(&foreign).is_some());
    assert_eq!(registry.len(), 3);
    assert_eq!(registry.total_bytes(), 3 + 1 + 1);
}

#[test]
fn a_failed_run_leaves_none_of_its_refs() {
    let registry = SessionRefRegistry::default();
    let run = Uuid::new_v4();
    registry.insert(
        Arc::new(vec![1u8]),
        "bytes",
        RefLifetime::UntilExplicitDrop,
        owned_by(run, None),
    );
    registry.insert(
        Arc::new(vec![1u8]),
        "bytes",
        RefLifetime::UntilParentFinish,
        owned_by(run, None),
    );
    assert!(registry.finish_run(run, true, "n").is_empty());
    assert!(registry.is_empty());
}

#[test]
fn finishing_a_parent_releases_only_its_parent_finish_refs() {
    let registry = SessionRefRegistry::default();
    let parent = Uuid::new_v4();
    let run = Uuid::new_v4();
    registry.insert(
        Arc::new(vec![1u8]),
        "bytes",
        RefLifetime::UntilParentFinish,
        owned_by(run, Some(parent)),
    );
    registry.insert(
        Arc::new(vec![1u8]),
        "bytes",
        RefLifetime::UntilParentFinish,
        owned_by(run, Some(parent)),
    );
    let explicit = registry.insert(
        Arc::new(vec![1u8]),
        "bytes",
        RefLifetime::UntilExplicitDrop,
        owned_by(run, Some(parent)),
    );
    let unrelated = registry.insert(
        Arc::new(vec![1u8]),
        "bytes",
        RefLifetime::UntilParentFinish,
        owned_by(run, None),
    );
    assert_eq!(registry.finish_parent(parent), 2);
    assert_eq!(registry.finish_parent(parent), 0);
    let left: Vec<Uuid> = registry.list().into_iter().map(|info| info.key).collect();
    assert_eq!(left.len(), 2);
    assert!(left.contains(&explicit) && left.contains(&unrelated));
}

#[test]
fn leases_expire_unless_renewed() {
    let registry = SessionRefRegistry::with_lease(Duration::from_millis(60));
    let parent = Uuid::new_v4();
    let renewed = registry.insert(
        Arc::new(vec![1u8]),
        "bytes",
        RefLifetime::UntilParentFinish,
        owned_by(Uuid::new_v4(), Some(parent)),
    );
    let abandoned = registry.insert(
        Arc::new(vec![1u8]),
        "bytes",
        RefLifetime::UntilParentFinish,
        owned_by(Uuid::new_v4(), None),
    );
    let explicit = registry.insert(
        Arc::new(vec![1u8]),
        "bytes",
        RefLifetime::UntilExplicitDrop,
        RefOwner::default(),
    );
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(registry.renew_parent(parent), 1);
    }
    assert_eq!(registry.sweep_expired(), 1);
    assert!(registry.get(&abandoned).is_none());
    assert!(registry.get(&renewed).is_some());
    assert!(registry.get(&explicit).is_some());
}

#[test]
fn list_reports_what_is_alive() {
    let registry = SessionRefRegistry::default();
    let run = Uuid::new_v4();
    let key = registry.insert(
        Arc::new(vec![0u8; 10]),
        "json",
        RefLifetime::UntilExplicitDrop,
        owned_by(run, None),
    );
    let info = &registry.list()[0];
    assert_eq!(info.key, key);
    assert_eq!(info.size, 10);
    assert_eq!(info.type_tag, "json");
    assert_eq!(info.lifetime, RefLifetime::UntilExplicitDrop);
    assert_eq!(info.owner_run, Some(run));
    assert!(info.created_at_epoch_ms > 1_600_000_000_000);
    assert!(registry.remove(&key));
    assert!(!registry.remove(&key));
}

#[test]
fn indexes_follow_removals_so_a_run_ends_with_exactly_its_remaining_refs() {
    let registry = SessionRefRegistry::default();
    let run = Uuid::new_v4();
    let parent = Uuid::new_v4();
    let insert = |lifetime| {
        registry.insert(
            Arc::new(vec![0u8]),
            "bytes",
            lifetime,
            owned_by(run, Some(parent)),
        )
    };
    let released_early = insert(RefLifetime::UntilContextDrop);
    let context = insert(RefLifetime::UntilContextDrop);
    let leased = insert(RefLifetime::UntilParentFinish);
    let leased_released = insert(RefLifetime::UntilParentFinish);
    // Many refs of other runs: ending `run` must neither touch nor list them.
    let others: Vec<Uuid> = (0..1000)
        .map(|_| {
            registry.insert(
                Arc::new(vec![0u8]),
                "bytes",
                RefLifetime::UntilExplicitDrop,
                owned_by(Uuid::new_v4(), None),
            )
        })
        .collect();
    assert!(registry.remove(&released_early));
    assert!(registry.remove(&leased_released));

    let outliving = registry.finish_run(run, false, "node-b");
    assert_eq!(outliving.keys().copied().collect::<Vec<_>>(), vec![leased]);
    assert!(registry.get(&context).is_none());
    assert_eq!(registry.len(), 1001);
    assert_eq!(registry.renew_parent(parent), 1);
    assert_eq!(registry.finish_parent(parent), 1);
    assert!(others.iter().all(|key| registry.get(key).is_some()));
    assert_eq!(registry.len(), 1000);
}
