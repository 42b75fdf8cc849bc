import { Migration } from "@mikro-orm/migrations";

// A GPU is free when it is AVAILABLE and nobody holds it: what placement may take.
const FREE = `status = 'AVAILABLE' and holder is null`;
// A host that takes new environments: online, not cordoned, and its agent did not say it cannot run them.
const OPEN_HOST = `h.status = 'ONLINE' and h.schedulable and h.runtime_unavailable_reason = ''`;

export class Migration20261215000000_free_gpu_counts extends Migration {
  override async up(): Promise<void> {
    // Writers wait while the counts are filled and the triggers made, so none is missed or counted twice.
    this.addSql(`lock table "gpus" in share row exclusive mode;`);
    // Free GPUs per host and model, and per host of any model (model ''), kept by the triggers below
    // in the same transaction as the GPU rows they count: placement finds the best-fit host through
    // the index instead of counting every free GPU of the fleet.
    this.addSql(
      `create table "free_gpu_counts" ("host_id" uuid not null, "model" varchar(128) not null, "free" int not null, constraint "free_gpu_counts_pkey" primary key ("host_id", "model"));`,
    );
    this.addSql(`create index "free_gpu_counts_best_fit_index" on "free_gpu_counts" ("model", "free", "host_id");`);
    this.addSql(
      `alter table "free_gpu_counts" add constraint "free_gpu_counts_host_id_foreign" foreign key ("host_id") references "hosts" ("id") on update cascade on delete cascade;`,
    );
    this.addSql(
      `insert into "free_gpu_counts" ("host_id", "model", "free")
       select host_id, model, count(*) from gpus where ${FREE} and model <> '' group by host_id, model
       union all
       select host_id, '', count(*) from gpus where ${FREE} group by host_id;`,
    );
    // One trigger per statement, not per row: a statement's changes are summed per (host, model), and
    // the counts are written in key order, so statements that touch several hosts cannot deadlock on
    // them. A statement that frees as many GPUs of a host as it takes (or changes no GPU's freedom,
    // like most updates) writes nothing. Hosts deleted meanwhile (their GPUs go with them) are skipped.
    this.addSql(
      `create function "free_gpu_counts_follow"() returns trigger language plpgsql as $$
       begin
         if tg_op = 'INSERT' then
           ${applyChanges(`select host_id, model, 1 as delta from new_gpus where ${FREE}`)}
         elsif tg_op = 'DELETE' then
           ${applyChanges(`select host_id, model, -1 as delta from old_gpus where ${FREE}`)}
         else
           ${applyChanges(
             `select host_id, model, 1 as delta from new_gpus where ${FREE}
              union all select host_id, model, -1 from old_gpus where ${FREE}`,
           )}
         end if;
         return null;
       end $$;`,
    );
    this.addSql(
      `create trigger "gpus_free_counts_insert" after insert on "gpus" referencing new table as new_gpus for each statement execute function "free_gpu_counts_follow"();`,
    );
    this.addSql(
      `create trigger "gpus_free_counts_update" after update on "gpus" referencing old table as old_gpus new table as new_gpus for each statement execute function "free_gpu_counts_follow"();`,
    );
    this.addSql(
      `create trigger "gpus_free_counts_delete" after delete on "gpus" referencing old table as old_gpus for each statement execute function "free_gpu_counts_follow"();`,
    );
    // Placement in one round trip (see placeEnvironment). Candidates come best fit first (the fewest
    // free GPUs that are enough) from the counts' index. Each is tried in a block of its own, a
    // savepoint: the host share-locked and re-read (a concurrent cordon, drain or hello waits for this
    // placement or is seen by it), then its GPUs locked FOR UPDATE SKIP LOCKED; a host that falls short
    // gives its locks back. A first pass leaves hosts that another placement is working on to it (a
    // transaction-scoped advisory try-lock, never waited for), so concurrent creations spread over the
    // hosts that fit instead of queueing behind each other on one host's GPUs and counts; if that left
    // nothing, a second pass tries those hosts too. Returns no host when nothing fitted; contended
    // then says whether a host fitted but its GPUs were being taken by others.
    this.addSql(
      `create function "place_gpus"(want int, models text[], only_host uuid, out host_id uuid, out gpus jsonb, out contended boolean)
       language plpgsql as $$
       declare
         candidates refcursor;
         candidate uuid;
         picked jsonb;
         passed_over boolean := false;
       begin
         contended := false;
         for pass in 1..2 loop
           if want = 0 then
             open candidates for
               select h.id from hosts h left join free_gpu_counts f on f.host_id = h.id and f.model = ''
                where ${OPEN_HOST} and (only_host is null or h.id = only_host)
                order by coalesce(f.free, 0), h.id limit 64;
           elsif cardinality(models) <= 1 then
             open candidates for
               select f.host_id from free_gpu_counts f join hosts h on h.id = f.host_id
                where f.model = coalesce(models[1], '') and f.free >= want and ${OPEN_HOST}
                  and (only_host is null or f.host_id = only_host)
                order by f.free, f.host_id limit 64;
           else
             open candidates for
               select f.host_id from free_gpu_counts f join hosts h on h.id = f.host_id
                where f.model = any(models) and f.free > 0 and ${OPEN_HOST} and (only_host is null or f.host_id = only_host)
                group by f.host_id having sum(f.free) >= want
                order by sum(f.free), f.host_id limit 64;
           end if;
           loop
             fetch candidates into candidate;
             exit when not found;
             if pass = 1 and not pg_try_advisory_xact_lock(hashtextextended('placement:' || candidate, 7315)) then
               passed_over := true;
               continue;
             end if;
             begin
               perform 1 from hosts h where h.id = candidate and ${OPEN_HOST} for share;
               if found then
                 select coalesce(jsonb_agg(jsonb_build_object('id', g.id, 'uuid', g.uuid, 'index', g.index, 'model', g.model) order by g.index), '[]')
                   into picked
                   from (select g.id, g.uuid, g.index, g.model from gpus g
                          where g.host_id = candidate and g.status = 'AVAILABLE' and g.holder is null
                            and (cardinality(models) = 0 or g.model = any(models))
                          order by g.index limit want for update skip locked) g;
                 if jsonb_array_length(picked) = want then
                   host_id := candidate;
                   gpus := picked;
                   close candidates;
                   return;
                 end if;
                 contended := true; -- its free GPUs are being taken right now
               end if;
               raise exception 'host % does not fit', candidate;
             exception when raise_exception then
               null; -- rolled back to the block's start: this host's locks are given back
             end;
           end loop;
           close candidates;
           exit when not passed_over;
         end loop;
       end $$;`,
    );
  }

  override async down(): Promise<void> {
    this.addSql(`drop function "place_gpus"(int, text[], uuid);`);
    this.addSql(`drop trigger "gpus_free_counts_delete" on "gpus";`);
    this.addSql(`drop trigger "gpus_free_counts_update" on "gpus";`);
    this.addSql(`drop trigger "gpus_free_counts_insert" on "gpus";`);
    this.addSql(`drop function "free_gpu_counts_follow"();`);
    this.addSql(`drop table "free_gpu_counts";`);
  }
}

/**
 * The statement that adds `changes` (rows of host_id, model, delta: +1 for a GPU that became free,
 * -1 for one that stopped being free) to the counts: each GPU counts for its model and for ''.
 */
function applyChanges(changes: string): string {
  return `insert into free_gpu_counts as c (host_id, model, free)
           select d.host_id, d.model, d.delta from (
             select ch.host_id, m.model, sum(ch.delta)::int as delta
               from (${changes}) ch
               cross join lateral (select ch.model where ch.model <> '' union all select '') m(model)
              group by ch.host_id, m.model) d
           join hosts h on h.id = d.host_id
          where d.delta <> 0
          order by d.host_id, d.model
         on conflict (host_id, model) do update set free = c.free + excluded.free;`;
}
