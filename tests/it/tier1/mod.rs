//! The service-free tier: the SQLite half of every test written once for
//! both back ends (its body is in [`crate::tier2`], beside its PostgreSQL
//! half). Each is an end-to-end run of the real `backfill` binary, in
//! process, on an embedded database: no PostgreSQL, no RabbitMQ.

mod demo_path;
mod earlier_plans;
mod given_up;

mod behaviour {
    on_sqlite!(behaviour::scope_flags_and_skips_on_both_back_ends);
    on_sqlite!(behaviour::row_errors_exit_non_zero_and_the_rest_commits_on_both_back_ends);
    on_sqlite!(behaviour::conflicts_and_redelivery_on_both_back_ends);
    on_sqlite!(behaviour::collection_migrate_then_cleanup_on_both_back_ends);
    on_sqlite!(
        behaviour::on_conflict_retry_applies_the_rules_to_the_applications_edit_on_both_back_ends
    );
    on_sqlite!(behaviour::rows_holding_invalid_json_are_errors_with_their_keys_on_both_back_ends);
    on_sqlite!(behaviour::revert_restores_every_document_on_both_back_ends);
}

mod bytes_kept {
    on_sqlite!(bytes_kept::a_rewrite_keeps_the_bytes_of_everything_no_rule_touched);
    on_sqlite!(
        bytes_kept::a_change_under_a_duplicated_key_is_a_row_error_and_the_row_is_left_alone
    );
}

mod convergence {
    on_sqlite!(convergence::integer_keys_in_any_form_are_one_row_each_on_both_back_ends);
    on_sqlite!(convergence::a_key_that_is_not_an_integer_is_refused_naming_it_on_both_back_ends);
}

mod job_language {
    on_sqlite!(
        job_language::renaming_a_field_in_every_revision_of_a_page_type_verifies_and_reverts
    );
    on_sqlite!(job_language::selector_condition_and_jq_rules_over_every_collection_node);
}

mod params {
    on_sqlite!(params::parameters_are_typed_recorded_shown_and_part_of_the_review);
}

mod streamfield {
    on_sqlite!(streamfield::a_struct_child_is_renamed_on_pages_and_inside_revisions_and_reverted);
    on_sqlite!(
        streamfield::a_revision_whose_streamfield_is_not_json_is_a_row_error_and_the_rest_commits
    );
    on_sqlite!(streamfield::created_blocks_get_uuid4_ids_and_a_revert_restores_the_stream);
}
