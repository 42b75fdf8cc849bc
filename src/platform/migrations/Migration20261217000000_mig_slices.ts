import { Migration } from "@mikro-orm/migrations";

// A GPU is free when it is AVAILABLE, nobody holds it and it is not in MIG mode (then its slices are
// what placement may take, each a GPU row of its own); before this migration, without the last.
const FREE = `status = 'AVAILABLE' and holder is null and not mig_enabled`;
const OLD_FREE = `status = 'AVAILABLE' and holder is null`;
// A host that takes new environments: online, not cordoned, and its agent did not say it cannot run them.
const OPEN_HOST = `h.status = 'ONLINE' and h.schedulable and h.runtime_unavailable_reason = ''`;

/**
 * MIG slices as GPUs of their own: a slice row points at its physical GPU (parent_id) and carries its
 * profile; its model is the parent's followed by " MIG <profile>", so per-model counts, placement and
 * quotas treat a profile like a model. A GPU in MIG mode is never free itself, and the counts of "any
 * model" (model '') hold whole GPUs only: a request for GPUs of any model never gets a slice.
 */
export class Migration20261217000000_mig_slices extends Migration {
  override async up(): Promise<void> {
    this.addSql(`lock table "gpus" in share row exclusive mode;`);
    this.addSql(
      `alter table "gpus" add column "mig_enabled" boolean not null default false, add column "parent_id" uuid null, add column "mig_profile" varchar(32) not null default '', add column "mig_placement" jsonb null;`,
    );
    this.addSql(
      `alter table "gpus" add constraint "gpus_parent_id_foreign" foreign key ("parent_id") references "gpus" ("id") on update cascade on delete cascade;`,
    );
    this.addSql(`create index "gpus_parent_id_index" on "gpus" ("parent_id");`);
    // The slice models of a profile, for placement: few rows, whatever the size of the fleet.
    this.addSql(`create index "gpus_mig_profile_index" on "gpus" ("mig_profile", "model") where mig_profile <> '';`);
    // GPUs in MIG mode, for the reconciler's look at those held whole.
    this.addSql(`create index "gpus_mig_enabled_index" on "gpus" ("host_id") where mig_enabled;`);
    this.addSql(`alter table "environments" add column "mig_profile" varchar(24) not null default '';`);
    this.addSql(`alter table "resource_quotas" add column "max_mig_slices_per_profile" jsonb not null default '{}';`);
    this.addSql(`drop index "gpus_free_index";`);
    this.addSql(`create index "gpus_free_index" on "gpus" ("host_id") where ${FREE};`);
    // No GPU is in MIG mode or a slice yet, so the counts stay right; the triggers learn the new rules.
    this.addSql(followFunction(true));
    this.addSql(placeFunction(true));
  }

  override async down(): Promise<void> {
    // Slices go, their parents are whole again, and the functions are as migration free_gpu_counts
    // made them; then the counts are made again from the rows.
    this.addSql(`delete from "gpus" where "parent_id" is not null;`);
    this.addSql(`update "gpus" set "mig_enabled" = false where "mig_enabled";`);
    this.addSql(followFunction(false));
    this.addSql(placeFunction(false));
    this.addSql(`delete from "free_gpu_counts";`);
    this.addSql(
      `insert into "free_gpu_counts" ("host_id", "model", "free")
       select host_id, model, count(*) from gpus where ${OLD_FREE} and model <> '' group by host_id, model
       union all
       select host_id, '', count(*) from gpus where ${OLD_FREE} group by host_id;`,
    );
    this.addSql(`drop index "gpus_free_index";`);
    this.addSql(`create index "gpus_free_index" on "gpus" ("host_id") where "status" = 'AVAILABLE' and "holder" is null;`);
    this.addSql(`alter table "resource_quotas" drop column "max_mig_slices_per_profile";`);
    this.addSql(`alter table "environments" drop column "mig_profile";`);
    this.addSql(`drop index "gpus_mig_enabled_index";`);
    this.addSql(`drop index "gpus_mig_profile_index";`);
    this.addSql(`drop index "gpus_parent_id_index";`);
    this.addSql(`alter table "gpus" drop constraint "gpus_parent_id_foreign";`);
    this.addSql(
      `alter table "gpus" drop column "mig_enabled", drop column "parent_id", drop column "mig_profile", drop column "mig_placement";`,
    );
  }
}

/** The free GPUs' counts' trigger function; `mig`: with this migration's rules, else the earlier ones. */
function followFunction(mig: boolean): string {
  const free = mig ? FREE : OLD_FREE;
  const profile = mig ? "mig_profile," : "";
  return `create or replace function "free_gpu_counts_follow"() returns trigger language plpgsql as $$
       begin
         if tg_op = 'INSERT' then
           ${applyChanges(mig, `select host_id, model, ${profile} 1 as delta from new_gpus where ${free}`)}
         elsif tg_op = 'DELETE' then
           ${applyChanges(mig, `select host_id, model, ${profile} -1 as delta from old_gpus where ${free}`)}
         else
           ${applyChanges(
             mig,
             `select host_id, model, ${profile} 1 as delta from new_gpus where ${free}
              union all select host_id, model, ${profile} -1 from old_gpus where ${free}`,
           )}
         end if;
         return null;
       end $$;`;
}

/** Placement in one round trip (see migration free_gpu_counts); `mig` as for followFunction. */
function placeFunction(mig: boolean): string {
  const free = mig ? FREE : OLD_FREE;
  return `create or replace function "place_gpus"(want int, models text[], only_host uuid, out host_id uuid, out gpus jsonb, out contended boolean)
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
                          where g.host_id = candidate and ${qualified(free)}
                            ${mig ? "and (case when cardinality(models) = 0 then g.mig_profile = '' else g.model = any(models) end)" : "and (cardinality(models) = 0 or g.model = any(models))"}
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
       end $$;`;
}

/** FREE with its columns on `g.` (a query that names the table). */
function qualified(condition: string): string {
  return condition.replace(/\b(status|holder|mig_enabled)\b/g, "g.$1");
}

/**
 * The statement that adds `changes` (rows of host_id, model, mig_profile when `mig`, delta) to the
 * counts: each GPU counts for its model, and a whole GPU (no profile) also for ''; before this
 * migration, every GPU counted for ''.
 */
function applyChanges(mig: boolean, changes: string): string {
  return `insert into free_gpu_counts as c (host_id, model, free)
           select d.host_id, d.model, d.delta from (
             select ch.host_id, m.model, sum(ch.delta)::int as delta
               from (${changes}) ch
               cross join lateral (select ch.model where ch.model <> '' union all select '' where ${mig ? "ch.mig_profile = ''" : "true"}) m(model)
              group by ch.host_id, m.model) d
           join hosts h on h.id = d.host_id
          where d.delta <> 0
          order by d.host_id, d.model
         on conflict (host_id, model) do update set free = c.free + excluded.free;`;
}
