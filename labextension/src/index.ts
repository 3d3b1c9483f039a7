/**
 * hybridhub inside JupyterLab.
 *
 * A status bar item (`H100 × 2 · enterprise · 1 h 20 min left · 0.5 h ($3.25) charged · $6.50/h`)
 * that opens a panel with the full session record, and every warning before a stop as a
 * JupyterLab notification, each shown once (and kept in the notification centre).
 *
 * "Move to other hardware" (panel button, command `hybridhub:move`) saves every open document,
 * records the open ones in this browser's storage, and opens the hub's move page (the picker,
 * preselected); the new Lab reopens the recorded documents once (`reopenMoved`).
 *
 * The data comes from this server's `hybridhub/session` endpoint (the server extension in
 * `hybridhub_lab`), which reads the portal at most once per 30 s; the front end asks it
 * no more often than that and backs off when it answers 503.
 */
import {
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { MainAreaWidget, Notification } from '@jupyterlab/apputils';
import { PageConfig, URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';
import { IStatusBar } from '@jupyterlab/statusbar';
import { Widget } from '@lumino/widgets';

/** A warning the portal says is due. */
interface IWarning {
  id: string;
  kind: 'budget' | 'stop' | 'course' | 'idle';
  level: string;
  message: string;
  stop_at?: string;
}

/** What `GET hybridhub/session` answers (see portal/lab_session.py). */
interface ISession {
  user: string;
  server: string;
  now: string;
  session: Record<string, unknown> | null;
  reservation: {
    resource_class: string;
    model: string | null;
    count: number;
    hours: number;
    ends_at: string | null;
    charged: number;
    unit: string;
    charged_text: string;
    group: string;
    /** Money at the price the launch was admitted at (absent from an older portal). */
    cost_text?: string;
    hourly_price_text?: string;
  } | null;
  /** Accelerator use as the server reports it (absent from an older portal). */
  utilisation?: {
    state: 'busy' | 'idle' | 'unknown';
    idle_minutes: number | null;
    devices: { index: number; utilisation: number; memory_used_mb: number; memory_total_mb: number }[];
    sampled_at: string | null;
  } | null;
  budget: Record<string, unknown> | null;
  course: { title: string; ends_at: string } | null;
  ends_at: string | null;
  stop_at: string | null;
  warnings: IWarning[];
  stale: boolean;
  retry_after: number;
  min_interval: number;
}

const PLUGIN_ID = 'hybridhub-lab:plugin';
const SAVE_ALL = 'docmanager:save-all';
/** The final warning comes this long before an announced stop. */
const FINAL_WARNING_MS = 60_000;
/** Documents recorded before a move are reopened by the new Lab if it starts within this time. */
const REOPEN_WITHIN_MS = 30 * 60_000;
/** At most this many documents are recorded for reopening. */
const REOPEN_MAX = 20;

/** `1 h 05 min`, `4 min`, `< 1 min`. */
export function formatLeft(ms: number): string {
  if (ms <= 0) {
    return 'ending now';
  }
  const minutes = Math.floor(ms / 60_000);
  if (minutes < 1) {
    return '< 1 min';
  }
  const h = Math.floor(minutes / 60);
  const m = minutes % 60;
  return h > 0 ? `${h} h ${String(m).padStart(2, '0')} min` : `${m} min`;
}

/** `0.5 h ($3.25)`: hours charged, with their money when the portal says it. */
export function chargedText(r: NonNullable<ISession['reservation']>): string {
  return r.cost_text ? `${r.charged_text} (${r.cost_text})` : r.charged_text;
}

/** The panel's "Accelerator use" row: `busy`, `idle 25 min`, `unknown`; null when not reported. */
export function utilisationText(u: ISession['utilisation']): string | null {
  if (!u) {
    return null;
  }
  if (u.state === 'idle') {
    return u.idle_minutes === null ? 'idle' : `idle ${u.idle_minutes} min`;
  }
  const values = (u.devices ?? []).map(d => Number(d.utilisation)).filter(Number.isFinite);
  return u.state === 'busy' && values.length ? `busy (${Math.round(Math.max(...values))} %)` : u.state;
}

/** The status bar text: `H100 × 2 · enterprise · 1 h 20 min left · 0.5 h ($3.25) charged · $6.50/h`. */
export function statusText(s: ISession, nowMs: number): string {
  const r = s.reservation;
  if (!r) {
    return 'hybridhub: no session';
  }
  const parts = [`${r.model ? r.model.toUpperCase() : r.resource_class} × ${r.count}`, r.resource_class];
  if (s.ends_at) {
    parts.push(`${formatLeft(Date.parse(s.ends_at) - nowMs)} left`);
  }
  parts.push(`${chargedText(r)} charged`);
  if (r.hourly_price_text) {
    parts.push(r.hourly_price_text);
  }
  return parts.join(' · ');
}

class SessionStatus extends Widget {
  constructor() {
    super();
    this.addClass('jp-hybridhub-status');
    this.node.title = 'hybridhub session: click for details';
    this.node.textContent = 'hybridhub …';
  }
}

/** The panel with the full session record. */
class SessionPanel extends Widget {
  constructor(private readonly onMove: () => void) {
    super();
    this.addClass('jp-hybridhub-panel');
  }

  show_(s: ISession | null, error: string): void {
    const root = this.node;
    root.replaceChildren();
    const h = document.createElement('h2');
    h.textContent = 'Your hybridhub session';
    root.appendChild(h);
    if (error) {
      const p = document.createElement('p');
      p.textContent = error;
      root.appendChild(p);
    }
    if (!s) {
      return;
    }
    const table = document.createElement('table');
    const row = (label: string, value: unknown): void => {
      if (value === null || value === undefined || value === '') {
        return;
      }
      const tr = table.insertRow();
      const th = document.createElement('th');
      th.textContent = label;
      tr.appendChild(th);
      tr.insertCell().textContent = Array.isArray(value)
        ? value.join(', ') || '—'
        : String(value);
    };
    const rec = s.session ?? {};
    const r = s.reservation;
    const b = s.budget ?? {};
    row('Class', r?.resource_class ?? rec['resource_class']);
    row('Accelerator', `${r?.model ?? rec['accelerator'] ?? ''} × ${r?.count ?? rec['count'] ?? ''}`);
    row('Offering', rec['offering']);
    row('Backend', rec['backend']);
    row('Host', rec['host']);
    row('Instance', rec['instance_id'] ? `${rec['instance_id']} (${rec['instance_type']})` : null);
    row('GPU UUIDs', rec['gpu_uuids']);
    row('Image', rec['image']);
    row('Image digest', rec['image_id']);
    row('Trust level', rec['trust']);
    row('Folders not mounted (untrusted hardware)', rec['hidden_dirs']);
    row('Charged group', r?.group ?? rec['group']);
    row('Reserved hours', r?.hours);
    row('Reservation ends', r?.ends_at);
    row('Course session', s.course ? `${s.course.title}, ends ${s.course.ends_at}` : null);
    row('Charged so far', r ? chargedText(r) : null);
    row('Price', r?.hourly_price_text ? `${r.hourly_price_text} (as admitted)` : null);
    row('Accelerator use', utilisationText(s.utilisation));
    row('Group budget left', b['left_text']);
    row('Budget used', typeof b['share'] === 'number' ? `${Math.round((b['share'] as number) * 100)} %` : null);
    row('Budget resets', b['resets_at']);
    row('Stop announced for', s.stop_at && s.warnings.some(w => w.kind !== 'budget') ? s.stop_at : null);
    row('As of', s.now + (s.stale ? ' (portal not answering; last known)' : ''));
    root.appendChild(table);
    if (r && !s.course) {
      const move = document.createElement('button');
      move.className = 'jp-Button jp-mod-styled jp-mod-accept jp-hybridhub-move';
      move.textContent = 'Move to other hardware';
      move.title = 'Save all, then choose other hardware: the same home and image, this server replaced';
      move.addEventListener('click', this.onMove);
      root.appendChild(move);
    }
  }
}

/** The browser-storage key of the documents to reopen in this user's server after a move. */
function reopenKey(): string {
  return `hybridhub:reopen:${PageConfig.getOption('hubUser')}/${PageConfig.getOption('hubServerName')}`;
}

/** Paths of the documents open in the main area (at most REOPEN_MAX). */
function openDocuments(app: JupyterFrontEnd): string[] {
  const paths: string[] = [];
  for (const widget of app.shell.widgets('main')) {
    const path = (widget as unknown as { context?: { path?: unknown } }).context?.path;
    if (typeof path === 'string' && path && !paths.includes(path) && paths.length < REOPEN_MAX) {
      paths.push(path);
    }
  }
  return paths;
}

/** Save every open document, record the open ones, then open the hub's move page. */
async function moveToOtherHardware(app: JupyterFrontEnd): Promise<void> {
  await app.commands.execute(SAVE_ALL);
  window.localStorage.setItem(reopenKey(), JSON.stringify({ at: Date.now(), paths: openDocuments(app) }));
  const hub = PageConfig.getOption('hubPrefix') || '/hub/';
  const user = encodeURIComponent(PageConfig.getOption('hubUser'));
  const server = encodeURIComponent(PageConfig.getOption('hubServerName'));
  window.location.assign(URLExt.join(hub, 'hybridhub', 'move', user, server));
}

/** After a move: reopen, once, the documents the old Lab recorded (recent records only). */
async function reopenMoved(app: JupyterFrontEnd): Promise<void> {
  const raw = window.localStorage.getItem(reopenKey());
  if (!raw) {
    return;
  }
  window.localStorage.removeItem(reopenKey());
  let paths: unknown[] = [];
  try {
    const rec = JSON.parse(raw);
    paths = Date.now() - Number(rec.at) < REOPEN_WITHIN_MS && Array.isArray(rec.paths) ? rec.paths : [];
  } catch {
    return;
  }
  const open = new Set(openDocuments(app));
  for (const path of paths.slice(0, REOPEN_MAX)) {
    if (typeof path === 'string' && !open.has(path)) {
      await app.commands.execute('docmanager:open', { path }).catch(() => undefined);
    }
  }
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: 'hybridhub: session hardware, time left, cost and stop warnings',
  autoStart: true,
  optional: [IStatusBar],
  activate: (app: JupyterFrontEnd, statusBar: IStatusBar | null) => {
    const settings = ServerConnection.makeSettings();
    const url = URLExt.join(settings.baseUrl, 'hybridhub', 'session');
    const shown = new Set<string>();
    const item = new SessionStatus();
    const panel = new SessionPanel(() => void moveToOtherHardware(app));
    let current: ISession | null = null;
    let lastError = '';
    let offsetMs = 0; // server clock minus browser clock
    let finalTimer: number | undefined;
    let wrapper: MainAreaWidget<SessionPanel> | null = null;
    let active = false;

    const saveAll = {
      label: 'Save all',
      caption: 'Save every open document now',
      displayType: 'accent' as const,
      callback: () => void app.commands.execute(SAVE_ALL)
    };

    const notify = (w: IWarning): void => {
      if (shown.has(w.id)) {
        return;
      }
      shown.add(w.id);
      if (w.kind === 'budget') {
        const type = w.level === '80' ? 'info' : 'warning';
        Notification.emit(w.message, type, { autoClose: 15_000 });
      } else {
        Notification.warning(w.message, { autoClose: false, actions: [saveAll] });
      }
    };

    const scheduleFinal = (s: ISession): void => {
      window.clearTimeout(finalTimer);
      const announced = s.warnings.some(w => w.kind !== 'budget');
      if (!s.stop_at || !announced) {
        return;
      }
      const stopMs = Date.parse(s.stop_at) - offsetMs;
      const id = `final:${s.stop_at}`;
      finalTimer = window.setTimeout(() => {
        if (shown.has(id)) {
          return;
        }
        shown.add(id);
        Notification.error(
          `Your server stops in ${formatLeft(stopMs - Date.now())}: save your work now.`,
          { autoClose: false, actions: [saveAll] }
        );
      }, Math.max(0, stopMs - FINAL_WARNING_MS - Date.now()));
    };

    const render = (): void => {
      item.node.textContent = current
        ? statusText(current, Date.now() + offsetMs) + (current.stale ? ' (stale)' : '')
        : lastError
          ? 'hybridhub: session unknown'
          : 'hybridhub …';
      if (wrapper && !wrapper.isDisposed) {
        panel.show_(current, lastError);
      }
    };

    const openPanel = (): void => {
      if (!wrapper || wrapper.isDisposed) {
        wrapper = new MainAreaWidget({ content: panel });
        wrapper.id = 'hybridhub-session';
        wrapper.title.label = 'hybridhub session';
        wrapper.title.closable = true;
      }
      if (!wrapper.isAttached) {
        app.shell.add(wrapper, 'main');
      }
      app.shell.activateById(wrapper.id);
      render();
    };
    item.node.addEventListener('click', openPanel);
    app.commands.addCommand('hybridhub:move', {
      label: 'hybridhub: Move to Other Hardware',
      caption: 'Save all, then choose other hardware for this server',
      execute: () => moveToOtherHardware(app)
    });
    app.commands.addCommand('hybridhub:open-session', {
      label: 'hybridhub: Show Session',
      execute: openPanel
    });

    const poll = async (): Promise<void> => {
      let delayS = 30;
      try {
        const response = await ServerConnection.makeRequest(url, {}, settings);
        const body = await response.json();
        if (response.status === 404) {
          active = false; // not under hybridhub: stay out of the way
          return;
        }
        active = true;
        if (!response.ok) {
          lastError = body.message ?? `HTTP ${response.status}`;
          delayS = Math.max(30, Number(body.retry_after) || 30);
        } else {
          current = body as ISession;
          lastError = current.stale ? 'The portal is not answering; showing the last known state.' : '';
          offsetMs = Date.parse(current.now) - Date.now();
          delayS = Math.max(current.min_interval || 30, current.retry_after || 0);
          current.warnings.forEach(notify);
          scheduleFinal(current);
        }
      } catch (reason) {
        lastError = `The server did not answer: ${reason}`;
        delayS = 60;
      }
      render();
      window.setTimeout(() => void poll(), delayS * 1000);
    };

    if (statusBar) {
      statusBar.registerStatusItem(PLUGIN_ID, {
        item,
        align: 'left',
        rank: 50,
        isActive: () => active
      });
    }
    window.setInterval(render, 15_000); // time left counts down between polls
    void app.restored.then(() => {
      void reopenMoved(app);
      return poll();
    });
  }
};

export default plugin;
