-- Returns whether safedrop's ledger (safedrop.dropped_tables) exists, and whether the current role
-- could create it (CREATE on the database) or write to it.
SELECT to_regclass('safedrop.dropped_tables') IS NOT NULL                     AS ledger_exists,
       has_database_privilege(current_database(), 'CREATE')                   AS can_create_schema,
       CASE WHEN to_regclass('safedrop.dropped_tables') IS NOT NULL
            THEN has_table_privilege('safedrop.dropped_tables', 'INSERT') END  AS can_record
