import "uplot/dist/uPlot.min.css";
import "./style.css";
import { RemoteGpuError } from "@remotegpu/sdk/web";
import { render } from "preact";
import { useEffect, useState } from "preact/hooks";
import { savedToken, signIn, signOut, type Session } from "./api.js";
import { Audit } from "./audit.js";
import { GpuDetail, HostDetail } from "./detail.js";
import { EnvironmentDetail, Environments } from "./environments.js";
import { Fleet } from "./fleet.js";
import { ErrorBanner } from "./ui.js";

function useHash(): string {
  const [hash, setHash] = useState(location.hash);
  useEffect(() => {
    const update = () => setHash(location.hash);
    addEventListener("hashchange", update);
    return () => removeEventListener("hashchange", update);
  }, []);
  return hash;
}

function SignIn({ onSession, initialError }: { onSession: (s: Session) => void; initialError?: unknown }) {
  const [error, setError] = useState<unknown>(initialError);
  const [busy, setBusy] = useState(false);
  const submit = async (event: Event) => {
    event.preventDefault();
    const token = String(new FormData(event.currentTarget as HTMLFormElement).get("token") ?? "");
    setBusy(true);
    setError(undefined);
    try {
      onSession(await signIn(token));
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };
  return (
    <main class="signin">
      <h1>RemoteGPU</h1>
      <form onSubmit={submit} aria-label="Sign in">
        <label class="field">
          API token (cluster admin or workspace)
          <input name="token" type="password" autoComplete="off" required autoFocus />
        </label>
        <p class="hint">The token is kept in this browser tab only, until you sign out or close it.</p>
        <ErrorBanner error={error} />
        <button type="submit" class="primary" disabled={busy}>
          Sign in
        </button>
      </form>
    </main>
  );
}

/** "auto" follows the system's setting; the page's colours follow data-theme. */
function applyTheme(theme: string): void {
  const dark = theme === "dark" || (theme === "auto" && matchMedia("(prefers-color-scheme: dark)").matches);
  document.documentElement.dataset.theme = dark ? "dark" : "light";
}

function ThemeToggle() {
  const [theme, setTheme] = useState(localStorage.getItem("remotegpu.theme") ?? "auto");
  useEffect(() => {
    localStorage.setItem("remotegpu.theme", theme);
    // "System" follows the system's setting, also when it changes.
    const system = matchMedia("(prefers-color-scheme: dark)");
    const apply = () => applyTheme(theme);
    apply();
    system.addEventListener("change", apply);
    return () => system.removeEventListener("change", apply);
  }, [theme]);
  return (
    <label class="theme">
      Theme{" "}
      <select value={theme} onChange={(e) => setTheme(e.currentTarget.value)}>
        <option value="auto">System</option>
        <option value="light">Light</option>
        <option value="dark">Dark</option>
      </select>
    </label>
  );
}

function Shell({ session, onSignOut }: { session: Session; onSignOut: () => void }) {
  const hash = useHash();
  const admin = session.caller.clusterAdmin;
  const auditor = admin || session.role === "admin";
  const [, page = "", id = ""] = hash.split("/");
  const home = admin ? "fleet" : "environments";
  const route = page || home;

  const links = [...(admin ? [["fleet", "Fleet"]] : []), ["environments", "Environments"], ...(auditor ? [["audit", "Audit"]] : [])];
  let body;
  if (route === "fleet" && admin) body = <Fleet session={session} />;
  else if (route === "hosts" && admin) body = <HostDetail key={id} session={session} id={id} />;
  else if (route === "gpus" && admin) body = <GpuDetail key={id} session={session} id={id} />;
  else if (route === "environments" && id) body = <EnvironmentDetail key={id} session={session} id={id} />;
  else if (route === "environments") body = <Environments session={session} />;
  else if (route === "audit" && auditor) body = <Audit session={session} />;
  else body = <p>This page does not exist or is not open to this token.</p>;

  return (
    <>
      <header class="top">
        <a class="brand" href={`#/${home}`}>
          RemoteGPU
        </a>
        <nav aria-label="Main">
          {links.map(([key, label]) => (
            <a key={key} href={`#/${key}`} aria-current={route === key || (key === "fleet" && ["hosts", "gpus"].includes(route)) ? "page" : undefined}>
              {label}
            </a>
          ))}
        </nav>
        <span class="who" title={`token ${session.caller.tokenId}`}>
          {admin ? "cluster admin" : `workspace ${session.role}`}
        </span>
        <ThemeToggle />
        <button type="button" onClick={onSignOut}>
          Sign out
        </button>
      </header>
      <main>{body}</main>
    </>
  );
}

function App() {
  const [session, setSession] = useState<Session | undefined>(undefined);
  const [restoring, setRestoring] = useState(savedToken() !== null);
  const [error, setError] = useState<unknown>(undefined);
  useEffect(() => {
    const token = savedToken();
    if (token === null) return;
    signIn(token)
      .then(setSession)
      .catch((err) => {
        // A server that is restarting or out of reach does not cost the user their token.
        if (err instanceof RemoteGpuError && ["unauthenticated", "permission_denied"].includes(err.codeName)) signOut();
        setError(err);
      })
      .finally(() => setRestoring(false));
  }, []);
  if (restoring) return <p class="hint">Signing in…</p>;
  if (!session) return <SignIn onSession={setSession} initialError={error} />;
  return (
    <Shell
      session={session}
      onSignOut={() => {
        signOut();
        setSession(undefined);
        setError(undefined);
        location.hash = "";
      }}
    />
  );
}

applyTheme(localStorage.getItem("remotegpu.theme") ?? "auto"); // the sign-in page too
render(<App />, document.getElementById("app")!);
