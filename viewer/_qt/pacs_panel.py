"""PACS tab of the study browser, the PACS nodes dialog, and "Send to PACS" — thin Qt over
:mod:`radreview.studies.pacs` (query/retrieve/store) and :mod:`radreview.review.sr` (SR, SEG,
Parametric Map). Network jobs run on superqt workers that only yield plain objects; the middle
slice is loaded on the worker as soon as it has arrived and shown before the rest of the series.
"""

from __future__ import annotations

import getpass
import tempfile
import time
from pathlib import Path

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QCheckBox, QComboBox, QDialog, QDialogButtonBox, QDoubleSpinBox, QFormLayout, QHBoxLayout, QLabel, QLineEdit,
    QListWidget, QProgressBar, QPushButton, QSpinBox, QTableWidget, QTableWidgetItem, QTabWidget,
    QVBoxLayout, QWidget,
)
from superqt.utils import thread_worker

from radreview.studies import open_volume
from radreview.studies.pacs import (
    PacsError, PacsNode, PacsSettings, RetrieveCache, StudyQuery, echo, find_series, find_studies, iter_retrieve,
    load_settings, save_settings, store,
)

from .workers import _guard

__all__ = ["PacsPanel", "NodeDialog", "pacs_tabs"]


# ---------------------------------------------------------------- workers (no widgets touched)
def _call(fn, *a):
    yield ("busy",)
    return fn(*a)


@thread_worker(ignore_errors=True)
def call_worker(fn, *args):
    """Runs ``fn(*args)`` off the GUI thread; returns its result."""
    return (yield from _guard(_call(fn, *args)))


def _retrieve(node, study_uid, series_uid, folder, method, settings):
    t0 = time.perf_counter()
    for p in iter_retrieve(node, study_uid, series_uid, folder, method=method, settings=settings):
        preview = None
        if p.middle is not None:
            try:
                preview = open_volume(p.middle)  # one slice, decoded here, shown at once
            except Exception:  # noqa: BLE001 - a non-image instance: no preview, the series still loads
                preview = None
        yield ("retrieve", p.done, p.total, preview, time.perf_counter() - t0)
    return folder


@thread_worker(ignore_errors=True)
def retrieve_worker(node, study_uid, series_uid, folder, method="auto", settings=None):
    """Yields ``("retrieve", done, total, preview Volume | None, seconds)``; returns the folder."""
    return (yield from _guard(_retrieve(node, study_uid, series_uid, folder, method, settings)))


def _audit(action: str, payload: dict) -> str | None:
    """Append an audit row to the review store; returns the problem (damaged store...) or None."""
    from radreview.review.store import ReviewStore

    try:
        st = ReviewStore()
    except Exception as exc:  # noqa: BLE001 - StoreCorrupt/StoreTampered: say so, never crash the GUI
        return f"audit not recorded: {exc}"
    try:
        st.log_event(getpass.getuser(), action, payload)
    finally:
        st.close()
    return None


# ---------------------------------------------------------------- nodes dialog
class NodeDialog(QDialog):
    """Add, edit and remove PACS nodes; cache size limit and usage. Saves the settings file."""

    def __init__(self, settings: PacsSettings, parent=None) -> None:
        super().__init__(parent)
        self.setWindowTitle("PACS nodes")
        self.settings = settings
        self.list = QListWidget()
        self.list.addItems(list(settings.nodes))
        self.list.currentTextChanged.connect(self._show)
        self.name, self.kind = QLineEdit(), QComboBox()
        self.kind.addItems(["dimse", "dicomweb"])
        self.url, self.auth = QLineEdit(), QComboBox()
        self.auth.addItems(["none", "basic", "bearer"])
        self.username, self.password, self.token = QLineEdit(), QLineEdit(), QLineEdit()
        self.password.setEchoMode(QLineEdit.Password)
        self.token.setEchoMode(QLineEdit.Password)
        self.verify = QCheckBox("Verify TLS certificate")
        self.verify.setChecked(True)
        self.ae_title, self.host, self.calling = QLineEdit(), QLineEdit(), QLineEdit("RADREVIEW")
        self.port = QSpinBox()
        self.port.setRange(1, 65535)
        self.port.setValue(104)
        self.timeout = QDoubleSpinBox()
        self.timeout.setRange(0.5, 600)
        self.timeout.setValue(10)
        self.cache_limit = QDoubleSpinBox()
        self.cache_limit.setRange(10, 10_000_000)
        self.cache_limit.setValue(settings.cache_limit_mb)
        self.cache_limit.setSuffix(" MB")
        try:
            used = RetrieveCache(settings.cache_path(), int(settings.cache_limit_mb * 2**20)).size() / 2**20
        except OSError:
            used = 0.0
        self.cache_label = QLabel(f"{settings.cache_path()} — {used:.0f} MB used")
        self.status = QLabel("")
        form = QFormLayout()
        for label, w in (("Name", self.name), ("Kind", self.kind), ("DICOMweb URL", self.url), ("Auth", self.auth),
                         ("User", self.username), ("Password", self.password), ("Bearer token", self.token), ("", self.verify),
                         ("Called AE title", self.ae_title), ("Host", self.host), ("Port", self.port),
                         ("Calling AE title", self.calling), ("Timeout (s)", self.timeout),
                         ("Cache limit", self.cache_limit), ("Cache", self.cache_label)):
            form.addRow(label, w)
        save, remove, test = QPushButton("Save node"), QPushButton("Remove node"), QPushButton("Test connection")
        save.clicked.connect(self.save_node)
        remove.clicked.connect(self.remove_node)
        test.clicked.connect(self.test_connection)
        buttons = QDialogButtonBox(QDialogButtonBox.Close)
        buttons.rejected.connect(self.accept)
        lay = QHBoxLayout(self)
        lay.addWidget(self.list)
        right = QVBoxLayout()
        right.addLayout(form)
        row = QHBoxLayout()
        for b in (save, remove, test):
            row.addWidget(b)
        right.addLayout(row)
        right.addWidget(self.status)
        right.addWidget(buttons)
        lay.addLayout(right)

    def _show(self, name: str) -> None:
        n = self.settings.nodes.get(name)
        if n is None:
            return
        self.name.setText(n.name)
        self.kind.setCurrentText(n.kind)
        self.url.setText(n.url)
        self.auth.setCurrentText(n.auth)
        self.username.setText(n.username)
        self.password.setText(n.password)
        self.token.setText(n.token)
        self.verify.setChecked(bool(n.verify_tls))
        self.ae_title.setText(n.ae_title)
        self.host.setText(n.host)
        self.port.setValue(int(n.port))
        self.calling.setText(n.calling_ae)
        self.timeout.setValue(float(n.timeout))

    def node(self) -> PacsNode:
        """The node the form describes. Raises ValueError (message names the field)."""
        return PacsNode(name=self.name.text().strip(), kind=self.kind.currentText(), url=self.url.text().strip(),
                        auth=self.auth.currentText(), username=self.username.text(), password=self.password.text(),
                        token=self.token.text(), verify_tls=self.verify.isChecked(), ae_title=self.ae_title.text().strip(),
                        host=self.host.text().strip(), port=self.port.value(), calling_ae=self.calling.text().strip(),
                        timeout=self.timeout.value())

    def save_node(self) -> None:
        try:
            n = self.node()
            if not n.name:
                raise ValueError("a node needs a name")
        except ValueError as exc:
            self.status.setText(str(exc))
            return
        new = n.name not in self.settings.nodes
        self.settings.nodes[n.name] = n
        self.settings.cache_limit_mb = self.cache_limit.value()
        save_settings(self.settings)
        if new:
            self.list.addItem(n.name)
        self.status.setText(f"saved {n.label()}")

    def remove_node(self) -> None:
        name = self.list.currentItem().text() if self.list.currentItem() else ""
        if name in self.settings.nodes:
            del self.settings.nodes[name]
            save_settings(self.settings)
            self.list.takeItem(self.list.currentRow())

    def test_connection(self) -> None:
        try:
            n = self.node()
        except ValueError as exc:
            self.status.setText(str(exc))
            return
        self.status.setText(f"testing {n.label()}…")
        w = call_worker(echo, n)
        w.returned.connect(lambda dt: self.status.setText(f"{n.label()}: OK ({dt * 1000:.0f} ms)"))
        w.errored.connect(lambda e: self.status.setText(str(e)))
        w.start()


# ---------------------------------------------------------------- the PACS tab
class PacsPanel(QWidget):
    """Search (study level, then the series of the chosen study), retrieve with progress and
    Cancel into the local cache, and send results back.

    Signals: ``preview_ready(Volume)`` (the middle slice, as soon as it arrived),
    ``retrieved(str folder)`` (open it as any study), ``message(str)``.
    """

    preview_ready = Signal(object)
    retrieved = Signal(str)
    message = Signal(str)
    searched = Signal(int)
    sent = Signal(list)

    STUDY_COLUMNS = ["Patient ID", "Patient", "Date", "Modalities", "Description", "Series", "Study UID"]
    SERIES_COLUMNS = ["Modality", "Description", "Images", "Series UID"]

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.settings = self._load()
        self.node_box = QComboBox()
        self.reload_nodes()
        nodes_btn, test_btn = QPushButton("Nodes…"), QPushButton("Test connection")
        nodes_btn.clicked.connect(self.edit_nodes)
        test_btn.clicked.connect(self.test_connection)
        self.patient_id, self.patient_name, self.accession = QLineEdit(), QLineEdit(), QLineEdit()
        self.date_from, self.date_to = QLineEdit(), QLineEdit()
        for w, ph in ((self.patient_name, "wildcards * ?"), (self.date_from, "YYYYMMDD"), (self.date_to, "YYYYMMDD")):
            w.setPlaceholderText(ph)
        self.modality = QComboBox()
        self.modality.addItems(["", "CT", "MR", "PT", "CR", "DX", "US", "SEG", "SR"])
        self.search_button = QPushButton("Search")
        self.search_button.clicked.connect(self.search)
        self.studies = QTableWidget(0, len(self.STUDY_COLUMNS))
        self.studies.setHorizontalHeaderLabels(self.STUDY_COLUMNS)
        self.studies.setSelectionBehavior(QTableWidget.SelectRows)
        self.studies.setEditTriggers(QTableWidget.NoEditTriggers)
        self.studies.itemSelectionChanged.connect(self._study_chosen)
        self.series = QTableWidget(0, len(self.SERIES_COLUMNS))
        self.series.setHorizontalHeaderLabels(self.SERIES_COLUMNS)
        self.series.setSelectionBehavior(QTableWidget.SelectRows)
        self.series.setEditTriggers(QTableWidget.NoEditTriggers)
        self.method = QComboBox()
        self.method.addItems(["auto", "get", "move", "wado"])
        self.whole_study = QCheckBox("Whole study")
        self.retrieve_button, self.cancel_button = QPushButton("Retrieve"), QPushButton("Cancel")
        self.retrieve_button.clicked.connect(self.retrieve)
        self.cancel_button.clicked.connect(self.cancel)
        self.cancel_button.setEnabled(False)
        self.send_button = QPushButton("Send results to PACS")
        self.send_button.clicked.connect(self.send_results)
        self.progress = QProgressBar()
        self.progress.setVisible(False)
        self.status = QLabel("")
        self.status.setWordWrap(True)

        lay = QVBoxLayout(self)
        row = QHBoxLayout()
        row.addWidget(QLabel("PACS"))
        row.addWidget(self.node_box, 1)
        row.addWidget(nodes_btn)
        row.addWidget(test_btn)
        lay.addLayout(row)
        form = QFormLayout()
        form.addRow("Patient ID", self.patient_id)
        form.addRow("Patient name", self.patient_name)
        form.addRow("Accession", self.accession)
        dates = QHBoxLayout()
        dates.addWidget(self.date_from)
        dates.addWidget(QLabel("–"))
        dates.addWidget(self.date_to)
        form.addRow("Study date", dates)
        form.addRow("Modality", self.modality)
        lay.addLayout(form)
        lay.addWidget(self.search_button)
        lay.addWidget(self.studies, 2)
        lay.addWidget(self.series, 1)
        row = QHBoxLayout()
        row.addWidget(self.method)
        row.addWidget(self.whole_study)
        row.addWidget(self.retrieve_button)
        row.addWidget(self.cancel_button)
        lay.addLayout(row)
        lay.addWidget(self.progress)
        lay.addWidget(self.send_button)
        lay.addWidget(self.status)
        self.results = []
        self.series_results = []
        self._worker = None
        self.retrieve_t0 = None
        self.first_image_seconds = None
        # set by pacs_tabs: where "Send results" finds the study, the AI output, the explanation
        self.window = None
        self.explanation = None

    def _start(self, w, retrieve: bool = False):
        """Start a worker (superqt keeps running workers alive); the retrieve one is kept for Cancel."""
        if retrieve:
            self._worker = w
        w.start()
        return w

    # ------------------------------------------------------------------ nodes
    @staticmethod
    def _load() -> PacsSettings:
        try:
            return load_settings()
        except PacsError:
            return PacsSettings()

    def reload_nodes(self) -> None:
        self.node_box.clear()
        self.node_box.addItems(list(self.settings.nodes))

    def set_node(self, node: PacsNode) -> None:
        """Use ``node`` (added to the session's list, not saved)."""
        self.settings.nodes[node.name] = node
        self.reload_nodes()
        self.node_box.setCurrentText(node.name)

    def current_node(self) -> PacsNode | None:
        return self.settings.nodes.get(self.node_box.currentText())

    def edit_nodes(self) -> None:
        dlg = NodeDialog(self.settings, self)
        dlg.exec()
        self.reload_nodes()

    def _say(self, text: str) -> None:
        self.status.setText(text)
        self.message.emit(text)

    def _need_node(self) -> PacsNode | None:
        n = self.current_node()
        if n is None:
            self._say("no PACS node: add one with Nodes…")
        return n

    def test_connection(self) -> None:
        n = self._need_node()
        if n is None:
            return
        w = call_worker(echo, n)
        w.returned.connect(lambda dt: self._say(f"{n.label()}: OK ({dt * 1000:.0f} ms)"))
        w.errored.connect(lambda e: self._say(str(e)))
        self._start(w)

    # ------------------------------------------------------------------ search
    def query(self) -> StudyQuery:
        lo, hi = self.date_from.text().strip(), self.date_to.text().strip()
        rng = f"{lo}-{hi}" if (lo and hi and lo != hi) else (lo or (f"-{hi}" if hi else ""))
        if lo and not hi:
            rng = f"{lo}-"
        return StudyQuery(patient_id=self.patient_id.text().strip(), patient_name=self.patient_name.text().strip(),
                          accession=self.accession.text().strip(), study_date=rng, modality=self.modality.currentText())

    def search(self) -> None:
        n = self._need_node()
        if n is None:
            return
        try:
            q = self.query()
        except ValueError as exc:
            self._say(str(exc))
            return
        self.search_button.setEnabled(False)
        self._say(f"searching {n.label()}…")
        w = call_worker(find_studies, n, q)
        w.returned.connect(self._found)
        w.errored.connect(self._failed)
        w.finished.connect(lambda: self.search_button.setEnabled(True))
        self._start(w)

    def _found(self, rows) -> None:
        self.results = list(rows)
        self.studies.setRowCount(len(rows))
        for r, s in enumerate(rows):
            vals = [s.patient_id, s.patient_name, s.study_date, "/".join(s.modalities), s.description,
                    "" if s.series_count is None else str(s.series_count), s.study_instance_uid]
            for c, v in enumerate(vals):
                self.studies.setItem(r, c, QTableWidgetItem(v))
        self.studies.resizeColumnsToContents()
        self.series.setRowCount(0)
        self._say(f"{len(rows)} stud{'y' if len(rows) == 1 else 'ies'} found")
        self.searched.emit(len(rows))

    def _study_chosen(self) -> None:
        row = self.studies.currentRow()
        n = self.current_node()
        if n is None or not 0 <= row < len(self.results):
            return
        w = call_worker(find_series, n, self.results[row].study_instance_uid)
        w.returned.connect(self._series_found)
        w.errored.connect(self._failed)
        self._start(w)

    def _series_found(self, rows) -> None:
        self.series_results = list(rows)
        self.series.setRowCount(len(rows))
        for r, s in enumerate(rows):
            for c, v in enumerate([s.modality, s.description, "" if s.instance_count is None else str(s.instance_count),
                                   s.series_instance_uid]):
                self.series.setItem(r, c, QTableWidgetItem(v))
        self.series.resizeColumnsToContents()
        # preselect the largest image series
        if rows:
            best = max(range(len(rows)), key=lambda i: (rows[i].modality not in ("SR", "SEG", "KO", "PR"), rows[i].instance_count or 0))
            self.series.selectRow(best)

    # ------------------------------------------------------------------ retrieve
    def cache(self) -> RetrieveCache:
        return RetrieveCache(self.settings.cache_path(), int(self.settings.cache_limit_mb * 2**20))

    def retrieve(self) -> None:
        """Retrieve the selected series (or the whole study: "Whole study" ticked or no series selected)
        into the cache. For a series the middle slice comes first; for a study, the first image."""
        n = self._need_node()
        row = self.studies.currentRow()
        if n is None or not 0 <= row < len(self.results):
            self._say("choose a study first")
            return
        study = self.results[row].study_instance_uid
        srow = self.series.currentRow()
        series = (self.series_results[srow].series_instance_uid
                  if 0 <= srow < len(self.series_results) and not self.whole_study.isChecked() else None)
        cache = self.cache()
        folder = cache.study_dir(study)
        self._target = (n, study, series, folder)
        self.retrieve_t0 = time.perf_counter()
        self.first_image_seconds = None
        self._preview_sent = False
        self.progress.setVisible(True)
        self.progress.setRange(0, 0)
        self.retrieve_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self._say(f"retrieving from {n.label()}…")
        w = retrieve_worker(n, study, series, folder, self.method.currentText(), self.settings)
        w.yielded.connect(self._progress)
        w.returned.connect(self._retrieved)
        w.errored.connect(self._failed)
        w.finished.connect(self._idle)
        self._start(w, retrieve=True)

    def _progress(self, p) -> None:
        _, done, total, preview, _secs = p
        if total:
            self.progress.setRange(0, total)
        self.progress.setValue(done)
        self.progress.setFormat(f"{done}/{total or '?'}")
        if preview is not None and not self._preview_sent:
            self._preview_sent = True
            self.first_image_seconds = time.perf_counter() - self.retrieve_t0
            self.preview_ready.emit(preview)

    def _retrieved(self, folder) -> None:
        n, study, series, _ = self._target
        try:
            self.cache().evict(keep={study})
        except OSError:
            pass
        secs = time.perf_counter() - self.retrieve_t0
        problem = _audit("pacs-retrieve", {"node": n.name, "study": study, "series": series or "", "folder": str(folder),
                                           "seconds": round(secs, 3)})
        target = Path(folder) / series if series and (Path(folder) / series).is_dir() else Path(folder)
        problem = _audit("open", {"study": study, "source": "pacs", "node": n.name, "path": str(target)}) or problem
        self._say(f"retrieved in {secs:.1f} s into {target}" + (f" — {problem}" if problem else ""))
        self.retrieved.emit(str(target))

    def cancel(self) -> None:
        if self._worker is not None:
            self._worker.quit()
            self._say("retrieve cancelled")

    def _idle(self) -> None:
        self.progress.setVisible(False)
        self.retrieve_button.setEnabled(True)
        self.cancel_button.setEnabled(False)

    def _failed(self, exc) -> None:
        self._say(str(exc))

    # ------------------------------------------------------------------ results back
    def results_to_send(self, out: Path) -> list[Path]:
        """SR of the open study's findings and decisions, SEG of its accepted or edited
        segmentations and the Grad-CAM heatmap as a Parametric Map, written under ``out``."""
        from radreview.review.sr import (
            export_accepted_seg, export_parametric_map, export_sr, read_series, study_findings,
        )
        from radreview.review.store import ReviewStore

        win = self.window
        entry = getattr(win, "current_entry", None)
        if entry is None or not entry.files:
            raise ValueError("open a DICOM study first: results go back with references to its images")
        images = read_series(list(entry.files))
        try:
            st = ReviewStore()
        except Exception as exc:  # noqa: BLE001 - damaged store: nothing trustworthy to send
            raise ValueError(str(exc)) from None
        files = []
        findings = study_findings(st, str(images[0].StudyInstanceUID))
        seg_path = None
        result = getattr(getattr(win, "ai_panel", None), "result", None)
        if result is not None and getattr(result, "labels", None) is not None and result.labels.shape[0] == len(images):
            names = {s.index: s.name for s in result.stats}
            seg_path = export_accepted_seg(images, result.labels, names, findings, out / "seg.dcm", model=result.model_id)
            if seg_path:
                files.append(seg_path)
        files.append(export_sr(list(entry.files), st, out / "sr.dcm", seg_path=seg_path))
        ex = self.explanation
        if ex is not None and getattr(ex, "heatmap", None) is not None and ex.heatmap.shape[0] == len(images):
            files.append(export_parametric_map(images, ex.heatmap, out / "pm.dcm", str(getattr(ex, "model_id", "model")),
                                               str(getattr(ex, "target", "study"))))
        return files

    def send_results(self) -> None:
        n = self._need_node()
        if n is None:
            return
        try:
            files = self.results_to_send(Path(tempfile.mkdtemp(prefix="radreview-send-")))
        except ValueError as exc:
            self._say(str(exc))
            return
        w = call_worker(store, n, files)
        w.returned.connect(lambda uids: (_audit("pacs-store", {"node": n.name, "instances": list(uids)}),
                                         self._say(f"sent {len(uids)} object(s) to {n.label()}"), self.sent.emit(list(uids))))
        w.errored.connect(self._failed)
        self._start(w)


def pacs_tabs(window, local) -> QTabWidget:
    """The Studies dock's widget: the ``local`` series browser and a PACS tab side by side,
    the PACS tab wired to ``window``: the middle slice is shown as it arrives, the retrieved
    series opens as any study, and "Send results" finds the open study, the AI result and the
    explanation (``window.pacs_panel``, ``window.browser_tabs``)."""
    tabs = QTabWidget()
    tabs.addTab(local, "Local")
    panel = PacsPanel()
    tabs.addTab(panel, "PACS")
    panel.window = window

    def preview(vol) -> None:
        window.model.set_volume(vol)
        window.first_image_shown.emit()

    panel.preview_ready.connect(preview)
    panel.retrieved.connect(window.open_path)
    panel.message.connect(lambda m: window.statusBar().showMessage(m, 10000))
    window.pacs_panel = panel
    window.browser_tabs = tabs
    return tabs
