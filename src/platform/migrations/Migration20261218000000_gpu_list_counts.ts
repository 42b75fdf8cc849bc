import { Migration } from "@mikro-orm/migrations";

// What ListGpus filters a GPU by, of its own columns; `free` is FREE of migration mig_slices.
const KEY = "host_id, model, mig_profile, status, free";
const KEYED = "host_id, model, mig_profile, status, (status = 'AVAILABLE' and holder is null and not mig_enabled) as free";

/**
 * ListGpus' total_size counted from kept numbers instead of the GPU rows: GPUs per host and per value
 * of every column a list filters on, kept in step by triggers in the same transaction as the GPU rows
 * (as migration free_gpu_counts keeps the free ones). A fleet's hosts have one to a few such rows
 * each, so a count reads about one row per host instead of one per GPU. Host labels get an index for
 * the hosts a label selector picks.
 */
export class Migration20261218000000_gpu_list_counts extends Migration {
  override async up(): Promise<void> {
    // Writers wait while the counts are filled and the triggers made, so none is missed or counted twice.
    this.addSql(`lock table "gpus" in share row exclusive mode;`);
    this.addSql(
      `create table "gpu_list_counts" ("host_id" uuid not null, "model" varchar(128) not null, "mig_profile" varchar(32) not null, "status" varchar(16) not null, "free" boolean not null, "n" int not null, constraint "gpu_list_counts_pkey" primary key (${KEY}));`,
    );
    this.addSql(
      `alter table "gpu_list_counts" add constraint "gpu_list_counts_host_id_foreign" foreign key ("host_id") references "hosts" ("id") on update cascade on delete cascade;`,
    );
    this.addSql(`insert into "gpu_list_counts" (${KEY}, n) select ${KEYED}, count(*) from gpus group by ${KEY};`);
    // Per statement, as the free counts: changes summed per key and written in key order; a statement
    // that moves no GPU from one key to another (most updates) writes nothing. Rows that reach 0 stay,
    // a handful per host. Hosts deleted meanwhile (their GPUs go with them) are skipped.
    this.addSql(
      `create function "gpu_list_counts_follow"() returns trigger language plpgsql as $$
       begin
         if tg_op = 'INSERT' then
           ${applyChanges(`select ${KEYED}, 1 as delta from new_gpus`)}
         elsif tg_op = 'DELETE' then
           ${applyChanges(`select ${KEYED}, -1 as delta from old_gpus`)}
         else
           ${applyChanges(`select ${KEYED}, 1 as delta from new_gpus union all select ${KEYED}, -1 from old_gpus`)}
         end if;
         return null;
       end $$;`,
    );
    this.addSql(
      `create trigger "gpus_list_counts_insert" after insert on "gpus" referencing new table as new_gpus for each statement execute function "gpu_list_counts_follow"();`,
    );
    this.addSql(
      `create trigger "gpus_list_counts_update" after update on "gpus" referencing old table as old_gpus new table as new_gpus for each statement execute function "gpu_list_counts_follow"();`,
    );
    this.addSql(
      `create trigger "gpus_list_counts_delete" after delete on "gpus" referencing old table as old_gpus for each statement execute function "gpu_list_counts_follow"();`,
    );
    this.addSql(`create index "hosts_labels_index" on "hosts" using gin ("labels" jsonb_path_ops);`);
  }

  override async down(): Promise<void> {
    this.addSql(`drop index "hosts_labels_index";`);
    this.addSql(`drop trigger "gpus_list_counts_delete" on "gpus";`);
    this.addSql(`drop trigger "gpus_list_counts_update" on "gpus";`);
    this.addSql(`drop trigger "gpus_list_counts_insert" on "gpus";`);
    this.addSql(`drop function "gpu_list_counts_follow"();`);
    this.addSql(`drop table "gpu_list_counts";`);
  }
}

/** The statement that adds `changes` (rows of the key's columns and a delta of 1 or -1) to the counts. */
function applyChanges(changes: string): string {
  return `insert into gpu_list_counts as c (${KEY}, n)
           select d.host_id, d.model, d.mig_profile, d.status, d.free, d.delta from (
             select ${KEY}, sum(delta)::int as delta from (${changes}) ch group by ${KEY}) d
           join hosts h on h.id = d.host_id
          where d.delta <> 0
          order by d.host_id, d.model, d.mig_profile, d.status, d.free
         on conflict (${KEY}) do update set n = c.n + excluded.n;`;
}
