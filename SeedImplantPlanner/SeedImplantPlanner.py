import logging
from typing import Annotated

import qt
import vtk

import slicer
from slicer import (
    vtkMRMLColorTableNode,
    vtkMRMLMarkupsFiducialNode,
    vtkMRMLMarkupsNode,
    vtkMRMLModelNode,
    vtkMRMLPlotChartNode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
    vtkMRMLTableNode,
)
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from SeedImplantPlannerLib.mrml import plan_scene
from SeedImplantPlannerLib.mrml.intraop_registration import plan_ct_problem
from SeedImplantPlannerLib.mrml.volumes import DOSE_VOLUME_ATTRIBUTE
from SeedImplantPlannerLib.core.errors import CancelledError, SeedPlanError
from SeedImplantPlannerLib.core.requirements import missing_requirements
from SeedImplantPlannerLib.mrml.scene import SlicerSceneContext

#
# SeedImplantPlanner
#


class SeedImplantPlanner(ScriptedLoadableModule):
    """Planning of permanent I-125 seed implants (TG-43U1 dose, needles, loading, evaluation)."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Seed Implant Planner")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Radiotherapy")]
        self.parent.dependencies = ["Markups", "Segmentations", "Plots", "Tables"]
        self.parent.contributors = ["SeedImplantPlanner developers"]
        self.parent.helpText = _("""
Plans permanent radioactive seed implants (I-125, Pd-103) on CT: needles from a template grid or
free-hand, seed loading along the needles, inverse planning against dose goals, TG-43U1 dose with
isodose lines, DVH and plan metrics that follow seed and needle edits in the views.
Documentation: docs/slicer.md and the other pages of the docs folder in the SeedImplantPlanner sources.
""")
        self.parent.acknowledgementText = _("""
Dose calculation follows AAPM TG-43U1 (Rivard et al., Med Phys 31:633, 2004) with the consensus
data of each seed model (see Resources/SeedModels/PROVENANCE.md).
""")


#
# SeedImplantPlannerParameterNode
#


@parameterNodeWrapper
class SeedImplantPlannerParameterNode:
    """Parameters of the module; names and defaults are those of SeedImplantPlannerLib.mrml.parameters.

    The library reads and writes this node in the same layout (parameters.PlanParameters), so a
    scene saved by ``seedplan demo`` opens in the module with every selection restored.
    """

    ctVolume: vtkMRMLScalarVolumeNode
    segmentation: vtkMRMLSegmentationNode
    targetSegmentId: str = ""
    organSegmentIds: list[str]
    forbiddenSegmentIds: list[str]
    extraTargetSegmentIds: list[str]
    extraTargetPrescriptionsGy: list[str]
    extraTargetStrengths: list[str]
    extraTargetDirections: list[str]
    extraTargetGoals: list[str]
    seedModel: str = "I125_OncoSeed_6711"
    strengthValue: Annotated[float, WithinRange(0.001, 100.0)] = 0.5
    strengthUnit: Annotated[str, Choice(["U", "mCi"])] = "mCi"
    referenceDate: str = ""
    implantDate: str = ""
    prescriptionDoseGy: Annotated[float, WithinRange(1.0, 1000.0)] = 145.0
    doseGridSpacingMm: Annotated[float, WithinRange(0.25, 10.0)] = 2.0
    doseMarginMm: Annotated[float, WithinRange(0.0, 100.0)] = 15.0
    doseEngine: Annotated[str, Choice(["fast", "direct"])] = "fast"
    isodoseLevelsPercent: str = "50, 90, 100, 150, 200"
    needlesLocked: bool = False
    needleSpacingMm: Annotated[float, WithinRange(2.0, 30.0)] = 10.0
    seedSpacingMm: Annotated[float, WithinRange(2.0, 30.0)] = 10.0
    goalPreset: str = ""
    liveUpdate: bool = True
    seedsNode: vtkMRMLMarkupsFiducialNode
    needleNodes: list[vtkMRMLMarkupsNode]
    doseVolume: vtkMRMLScalarVolumeNode
    isodoseModels: list[vtkMRMLModelNode]
    dvhTable: vtkMRMLTableNode
    dvhChart: vtkMRMLPlotChartNode
    metricsTable: vtkMRMLTableNode
    doseColorTable: vtkMRMLColorTableNode
    slicerRtDvhTables: list[vtkMRMLTableNode]
    slicerRtDvhMetricsTable: vtkMRMLTableNode


#
# SeedImplantPlannerWidget
#


class SeedImplantPlannerWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Panels: Inputs, Source and prescription, Needles, Seeds, Dose, Evaluation."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._updatingGui = False
        self._placingNeedle = None
        self._planCt = None  # the plan's CT as last accepted (the Inputs selector is put back to it on a refusal)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SeedImplantPlanner.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SeedImplantPlannerLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndImportEvent, self.onSceneEndImport)

        for modelId in self.logic.seedModelIds():
            self.ui.seedModelComboBox.addItem(modelId)
        self.ui.goalPresetComboBox.addItem(_("(no goals)"), "")
        for name, title in self.logic.goalPresets().items():
            self.ui.goalPresetComboBox.addItem(title or name, name)
        for code, label in (("P", _("from posterior")), ("A", _("from anterior")), ("R", _("from right")),
                            ("L", _("from left")), ("S", _("from superior")), ("I", _("from inferior"))):
            self.ui.templateDirectionComboBox.addItem(label, code)

        # Inputs
        self.ui.segmentationSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onSegmentationChanged)
        self.ui.targetSegmentSelector.connect("currentSegmentChanged(QString)", self.onSegmentRolesChanged)
        self.ui.organsSegmentSelector.connect("segmentSelectionChanged(QStringList)", self.onSegmentRolesChanged)
        self.ui.forbiddenSegmentSelector.connect("segmentSelectionChanged(QStringList)", self.onSegmentRolesChanged)
        self.ui.extraTargetsLineEdit.connect("editingFinished()", self.onExtraTargetsChanged)
        # Source and prescription
        self.ui.seedModelComboBox.connect("currentIndexChanged(int)", self.onSeedModelChanged)
        self.ui.strengthValueSpinBox.connect("valueChanged(double)", self.updateStrengthLabel)
        self.ui.strengthUnitComboBox.connect("currentIndexChanged(int)", self.updateStrengthLabel)
        self.ui.referenceDateLineEdit.connect("editingFinished()", self.updateStrengthLabel)
        self.ui.implantDateLineEdit.connect("editingFinished()", self.updateStrengthLabel)
        # Needles
        self.ui.generateNeedlesButton.connect("clicked(bool)", self.onGenerateNeedles)
        self.ui.addNeedleButton.connect("clicked(bool)", self.onAddNeedle)
        self.ui.checkNeedlesButton.connect("clicked(bool)", self.onCheckNeedles)
        self.ui.lockNeedlesCheckBox.connect("toggled(bool)", self.onLockNeedles)
        # Seeds
        self.ui.loadSeedsButton.connect("clicked(bool)", self.onLoadSeeds)
        self.ui.optimizeButton.connect("clicked(bool)", self.onOptimize)
        self.ui.goalPresetComboBox.connect("currentIndexChanged(int)", self.onGoalPresetChanged)
        # Dose
        self.ui.computeDoseButton.connect("clicked(bool)", self.onComputeDose)
        self.ui.liveUpdateCheckBox.connect("toggled(bool)", self.onLiveUpdateToggled)
        # Evaluation
        self.ui.showDvhButton.connect("clicked(bool)", self.onShowDvh)
        self.ui.exportReportButton.connect("clicked(bool)", self.onExportReport)
        # Intra-op
        self.ui.intraopCtSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateIntraopRegistrationLabel)
        self.ui.intraopRegisterButton.connect("clicked(bool)", self.onIntraopRegister)
        self.ui.intraopLoadTransformButton.connect("clicked(bool)", self.onIntraopLoadTransform)
        self.ui.intraopClearRegistrationButton.connect("clicked(bool)", self.onIntraopClearRegistration)
        self.ui.intraopFindNeedlesButton.connect("clicked(bool)", self.onIntraopFindNeedles)
        self.ui.intraopLoadNeedlesButton.connect("clicked(bool)", self.onIntraopLoadNeedles)
        self.ui.intraopFindSeedsButton.connect("clicked(bool)", self.onIntraopFindSeeds)
        self.ui.intraopReplanButton.connect("clicked(bool)", self.onIntraopReplan)
        self.ui.intraopShowDvhButton.connect("clicked(bool)", self.onIntraopShowDvh)

        self.initializeParameterNode()
        self.restoreIntraopPanel()  # a scene loaded before the module was first opened

    def cleanup(self) -> None:
        self.stopObservingNeedlePlacement()
        self.logic.stopLiveUpdates()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGuiFromParameterNode)

    def onSceneStartClose(self, caller, event) -> None:
        self.stopObservingNeedlePlacement()
        self.logic.stopLiveUpdates()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def onSceneEndImport(self, caller, event) -> None:
        """A scene was loaded (.mrb): the Intra-op panel shows the review it holds as it was left."""
        if self.parent.isEntered:
            self.initializeParameterNode()
        self.restoreIntraopPanel()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.ctVolume:
            # the first volume that can be the plan's CT: not a dose, not a CT under a registration / transform
            for volume in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode"):
                if volume.GetAttribute(DOSE_VOLUME_ATTRIBUTE) is None and plan_ct_problem(volume) is None:
                    self._parameterNode.ctVolume = volume
                    break

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGuiFromParameterNode)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # widgets with a "SlicerParameterName" property in the .ui are connected automatically
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGuiFromParameterNode)
            self.updateGuiFromParameterNode()

    # -- GUI state ---------------------------------------------------------------------------------
    def updateGuiFromParameterNode(self, caller=None, event=None) -> None:
        if self._parameterNode is None or self._updatingGui:
            return
        # the Inputs CT selector sets ctVolume directly: a CT under a registration (the intra-op CT) is refused
        refused = self.logic.planScene().check_ct_choice(self._planCt)   # puts ctVolume back, updating again
        if refused:
            slicer.util.errorDisplay(_("Not the plan's CT: {0}.").format(refused))
            return
        self._planCt = self._parameterNode.ctVolume
        self._updatingGui = True
        try:
            p = self._parameterNode
            segmentation = p.segmentation
            for selector in (self.ui.targetSegmentSelector, self.ui.organsSegmentSelector,
                             self.ui.forbiddenSegmentSelector):
                selector.setCurrentNode(segmentation)
            self.ui.targetSegmentSelector.setCurrentSegmentID(p.targetSegmentId)
            self.ui.organsSegmentSelector.setSelectedSegmentIDs(list(p.organSegmentIds))
            self.ui.forbiddenSegmentSelector.setSelectedSegmentIDs(list(p.forbiddenSegmentIds))
            try:
                self.ui.extraTargetsLineEdit.text = plan_scene.format_target_list(self.logic.planScene().targets()[1:])
            except Exception:  # noqa: BLE001 - a target segment deleted meanwhile: the field stays as typed
                pass
            index = self.ui.seedModelComboBox.findText(p.seedModel)
            if index >= 0:
                self.ui.seedModelComboBox.currentIndex = index
            index = self.ui.goalPresetComboBox.findData(p.goalPreset)
            self.ui.goalPresetComboBox.currentIndex = max(index, 0)
            self.ui.seedsMarkupsWidget.setCurrentNode(p.seedsNode)
            self.ui.metricsTableView.setMRMLTableNode(p.metricsTable)
            hasTarget = bool(segmentation and p.targetSegmentId)
            hasNeedles = len(p.needleNodes) > 0
            hasSeeds = bool(p.seedsNode and p.seedsNode.GetNumberOfControlPoints())
            self.ui.generateNeedlesButton.enabled = hasTarget
            self.ui.loadSeedsButton.enabled = hasTarget and hasNeedles
            self.ui.optimizeButton.enabled = hasTarget
            self.ui.computeDoseButton.enabled = hasSeeds
            self.ui.showDvhButton.enabled = p.dvhChart is not None
            self.ui.exportReportButton.enabled = p.doseVolume is not None and hasTarget
            if self.ui.intraopPlanningCtSelector.currentNode() is None and p.ctVolume is not None:
                self.ui.intraopPlanningCtSelector.setCurrentNode(p.ctVolume)  # default: the plan's CT
        finally:
            self._updatingGui = False
        self.updateStrengthLabel()
        self.updateSeedSummary()
        self.updateNeedleTable()

    def onSegmentationChanged(self, node) -> None:
        if self._parameterNode is None or self._updatingGui:
            return
        self._parameterNode.segmentation = node
        self.updateGuiFromParameterNode()

    def onSegmentRolesChanged(self, *args) -> None:
        if self._parameterNode is None or self._updatingGui:
            return
        with slicer.util.NodeModify(self._parameterNode.parameterNode):
            self._parameterNode.targetSegmentId = self.ui.targetSegmentSelector.currentSegmentID() or ""
            self._parameterNode.organSegmentIds = list(self.ui.organsSegmentSelector.selectedSegmentIDs())
            self._parameterNode.forbiddenSegmentIds = list(self.ui.forbiddenSegmentSelector.selectedSegmentIDs())
        self.logic.invalidateEvaluation()

    def onExtraTargetsChanged(self) -> None:
        """Other targets of the implant (NAME:Rx[:strength] or NAME:rx=Gy,strength=S,direction=D,v150=%; ...),
        each against its own prescription (planning.targets.parse_target_list, the --target syntax)."""
        if self._parameterNode is None or self._updatingGui:
            return
        try:
            with slicer.util.tryWithErrorDisplay(_("Other targets not set."), waitCursor=False):
                ps = self.logic.planScene()
                first = ps.targets()[:1]
                extras = plan_scene.parse_target_list(self.ui.extraTargetsLineEdit.text,
                                                      self._parameterNode.strengthUnit)
                if not first:
                    if extras:
                        raise ValueError(_("choose the target first"))
                    return
                ps.set_targets([(first[0]["segment_id"], first[0]["prescription_Gy"], None)] + extras)
                self.logic.invalidateEvaluation()
        except Exception:  # noqa: BLE001 - already shown by tryWithErrorDisplay
            return

    def onSeedModelChanged(self, index) -> None:
        if self._parameterNode is None or self._updatingGui:
            return
        self._parameterNode.seedModel = self.ui.seedModelComboBox.currentText
        self.updateStrengthLabel()

    def onGoalPresetChanged(self, index) -> None:
        if self._parameterNode is None or self._updatingGui:
            return
        self._parameterNode.goalPreset = self.ui.goalPresetComboBox.itemData(index) or ""
        self.logic.invalidateEvaluation()

    def updateStrengthLabel(self, *args) -> None:
        if self._parameterNode is None:
            return
        try:
            strengthU = self.logic.planScene().seed_strength_U()
            self.ui.strengthAtImplantLabel.text = _("{0:.3f} U per seed at implant").format(strengthU)
        except Exception as exc:  # noqa: BLE001 - shown in the label, not a popup, while typing
            self.ui.strengthAtImplantLabel.text = str(exc)

    def updateSeedSummary(self) -> None:
        if self._parameterNode is None or self._parameterNode.seedsNode is None:
            self.ui.seedSummaryLabel.text = _("no seeds")
            return
        try:
            s = self.logic.planScene().seed_summary()
        except Exception as exc:  # noqa: BLE001 - a half-edited seed shows its problem in the label
            self.ui.seedSummaryLabel.text = str(exc)
            return
        activity = "" if s["total_mCi"] is None else _(", {0:.2f} mCi").format(s["total_mCi"])
        self.ui.seedSummaryLabel.text = _("{0} seeds, total {1:.2f} U{2}").format(s["count"], s["total_U"], activity)

    def updateNeedleTable(self) -> None:
        rows = self.logic.needleTableRows() if self._parameterNode else []
        columns = [("number", _("#")), ("depth_mm", _("depth (mm)")), ("angle_from_vertical_deg", _("angle (deg)")),
                   ("tilt_deg", _("tilt (deg)")), ("too_long", _("too long"))]
        table = self.ui.needleTable
        table.clear()
        table.setColumnCount(len(columns))
        table.setHorizontalHeaderLabels([label for _key, label in columns])
        table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, (key, _label) in enumerate(columns):
                value = row.get(key, "")
                text = f"{value:.1f}" if isinstance(value, float) else str(value)
                table.setItem(r, c, qt.QTableWidgetItem(text))

    # -- long work with progress and cancel --------------------------------------------------------
    def ensureRequirements(self) -> bool:
        """Install the packages of Resources/requirements.txt that Slicer does not bundle, after asking; True when all are there.

        Uses ``slicer.packaging.pip_ensure`` where the running Slicer has it (it asks, installs and offers a
        restart when an updated package was already imported), else asks here and calls ``slicer.util.pip_install``.
        """
        path = self.resourcePath("requirements.txt")
        try:
            import slicer.packaging as packaging
        except ImportError:
            packaging = None
        if packaging is not None and hasattr(packaging, "pip_ensure"):
            requirements = packaging.load_requirements(path)
            if packaging.pip_check(requirements):
                return True
            try:
                packaging.pip_ensure(requirements, requester=_("Seed Implant Planner"))
            except RuntimeError:  # the user declined the installation
                return False
            except Exception as exc:  # noqa: BLE001 - pip failed: say so and let the user retry
                slicer.util.errorDisplay(_("Installing the Python packages failed."), detailedText=str(exc))
                return False
            return packaging.pip_check(requirements)
        missing = missing_requirements(path)
        if not missing:
            return True
        if not slicer.util.confirmOkCancelDisplay(
                _("Seed Implant Planner needs the Python packages {0}. Install them now?").format(", ".join(missing))):
            return False
        try:
            with slicer.util.tryWithErrorDisplay(_("Installing {0} failed.").format(", ".join(missing)), waitCursor=True):
                slicer.util.pip_install(missing)
        except Exception:  # noqa: BLE001 - already shown by tryWithErrorDisplay
            return False
        return not missing_requirements(path)

    def runWithProgress(self, title, function):
        """Run ``function(progressCallback)`` with a cancellable progress dialog; errors shown the Slicer way."""
        if not self.ensureRequirements():
            return None
        dialog = slicer.util.createProgressDialog(windowTitle=title, labelText=title, maximum=100)
        self.ui.computeDoseButton.enabled = False

        def progressCallback(fraction, text):
            dialog.setValue(int(100 * fraction))
            dialog.setLabelText(text or title)
            slicer.app.processEvents()
            return not dialog.wasCanceled

        result = None
        try:
            with slicer.util.tryWithErrorDisplay(_("{0} failed.").format(title), waitCursor=True):
                try:
                    result = function(progressCallback)
                except CancelledError:
                    logging.info(f"{title}: cancelled by the user")
        finally:
            dialog.close()
            self.updateGuiFromParameterNode()
        return result

    # -- Needles -----------------------------------------------------------------------------------
    def onGenerateNeedles(self) -> None:
        direction = self.ui.templateDirectionComboBox.currentData
        seconds = self.ui.optimizerTimeSpinBox.value
        self.runWithProgress(_("Needle and seed planning"),
                             lambda progress: self.logic.planImplant("template", direction, timeLimitS=seconds,
                                                                     progress=progress))
        self.onCheckNeedles()

    def onAddNeedle(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Cannot add a needle."), waitCursor=False):
            self.finishNeedlePlacement()  # a placement still under way ends before a new one starts
            node = self.logic.addNeedleNode()
            selection = slicer.app.applicationLogic().GetSelectionNode()
            selection.SetReferenceActivePlaceNodeClassName("vtkMRMLMarkupsLineNode")
            selection.SetActivePlaceNodeID(node.GetID())
            interaction = slicer.app.applicationLogic().GetInteractionNode()
            self._placingNeedle = node
            self.addObserver(node, slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, self.onNeedlePointPlaced)
            interaction.SetCurrentInteractionMode(slicer.vtkMRMLInteractionNode.Place)
            self.addObserver(interaction, slicer.vtkMRMLInteractionNode.InteractionModeChangedEvent,
                             self.onNeedlePlacementModeChanged)

    def onNeedlePointPlaced(self, caller, event) -> None:
        if caller.GetNumberOfDefinedControlPoints() >= 2:
            self.finishNeedlePlacement()

    def onNeedlePlacementModeChanged(self, caller, event) -> None:
        """Placement mode left (finished, or cancelled with Esc or another tool): stop observing the needle."""
        if caller.GetCurrentInteractionMode() != slicer.vtkMRMLInteractionNode.Place:
            self.finishNeedlePlacement()

    def finishNeedlePlacement(self) -> None:
        """End the needle placement under way: a complete needle joins the plan, an incomplete one is removed."""
        node = self.stopObservingNeedlePlacement()
        if node is None or node.GetScene() is None:
            return
        if node.GetNumberOfDefinedControlPoints() >= 2:
            self.logic.restartLiveUpdates()
            self.updateNeedleTable()
            self.onCheckNeedles()
        else:
            self.logic.removeNeedleNode(node)
            self.updateGuiFromParameterNode()

    def stopObservingNeedlePlacement(self):
        """Remove the observers of a needle placement; returns the needle node being placed (or None)."""
        node, self._placingNeedle = self._placingNeedle, None
        if node is not None:
            self.removeObserver(node, slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, self.onNeedlePointPlaced)
        interaction = slicer.app.applicationLogic().GetInteractionNode()
        if interaction is not None:
            self.removeObserver(interaction, slicer.vtkMRMLInteractionNode.InteractionModeChangedEvent,
                                self.onNeedlePlacementModeChanged)
        return node

    def onCheckNeedles(self) -> None:
        if not self.ensureRequirements():
            return
        with slicer.util.tryWithErrorDisplay(_("Needle check failed."), waitCursor=True):
            hits = self.logic.needleObstacles()
            self.ui.obstacleWarningsLabel.text = "\n".join(h.describe() for h in hits) if hits else \
                _("No needle comes near a forbidden structure.")

    def onLockNeedles(self, locked) -> None:
        if self._parameterNode is not None and not self._updatingGui:
            self.logic.planScene().set_needles_locked(locked)

    # -- Seeds -------------------------------------------------------------------------------------
    def onLoadSeeds(self) -> None:
        self.runWithProgress(_("Seed loading"), lambda progress: self.logic.loadSeedsUniformly(progress=progress))

    def onOptimize(self) -> None:
        seconds = self.ui.optimizerTimeSpinBox.value
        self.runWithProgress(_("Inverse planning"),
                             lambda progress: self.logic.planImplant("freehand", None, timeLimitS=seconds,
                                                                     progress=progress))

    # -- Dose --------------------------------------------------------------------------------------
    def onComputeDose(self) -> None:
        self.runWithProgress(_("Dose calculation"), lambda progress: self.logic.computeDose(progress=progress))
        self.onLiveUpdateToggled(self.ui.liveUpdateCheckBox.checked)

    def onLiveUpdateToggled(self, enabled) -> None:
        if enabled:
            self.logic.planScene().on_updated = lambda plan: self.updateSeedSummary()
            self.logic.startLiveUpdates()
        else:
            self.logic.stopLiveUpdates()

    # -- Evaluation --------------------------------------------------------------------------------
    def onShowDvh(self) -> None:
        chart = self._parameterNode.dvhChart if self._parameterNode else None
        if chart is not None:
            slicer.modules.plots.logic().ShowChartInLayout(chart)

    def onExportReport(self) -> None:
        path = self.ui.reportPathLineEdit.currentPath
        if not self.ensureRequirements():
            return
        with slicer.util.tryWithErrorDisplay(_("Report export failed."), waitCursor=True):
            if not path:
                raise ValueError(_("Choose a file name for the report (.html)."))
            out = self.logic.writeReport(path)
            self.ui.reportPathLineEdit.addCurrentPathToHistory()
            slicer.util.showStatusMessage(_("Report written to {0}").format(out["html"]), 5000)

    # -- Intra-op ----------------------------------------------------------------------------------
    def onIntraopRegister(self) -> None:
        ctNode = self.ui.intraopCtSelector.currentNode()
        planningNode = self.ui.intraopPlanningCtSelector.currentNode()
        refused = []

        options = {"metric": "bone" if self.ui.intraopBoneMetricCheckBox.checked else "mattes",
                   "translation_only": bool(self.ui.intraopTranslationOnlyCheckBox.checked)}

        def register(progress):
            try:
                return self.logic.intraopRegister(ctNode, planningNode, progress=progress, **options)
            except SeedPlanError as exc:  # shown by runWithProgress; kept in the panel too
                refused.append(str(exc))
                raise
        result = self.runWithProgress(_("Registration to the planning CT"), register)
        self.updateIntraopRegistrationLabel()
        if refused:
            self.ui.intraopRegistrationLabel.text = _("Registration refused, nothing changed: {0}").format(refused[0]) \
                + "\n" + self.ui.intraopRegistrationLabel.text
        if result is not None:
            self.showRegistrationFusion(ctNode, planningNode)

    def onIntraopLoadTransform(self) -> None:
        ctNode = self.ui.intraopCtSelector.currentNode()
        path = self.ui.intraopTransformPathLineEdit.currentPath
        with slicer.util.tryWithErrorDisplay(_("Using the transform file failed."), waitCursor=True):
            if not path:
                raise ValueError(_("Choose the transform file (.tfm or .json from seedplan register, or saved in Slicer)."))
            self.logic.intraopLoadTransform(ctNode, path)
            self.ui.intraopTransformPathLineEdit.addCurrentPathToHistory()
            self.showRegistrationFusion(ctNode, self.ui.intraopPlanningCtSelector.currentNode())
        self.updateIntraopRegistrationLabel()

    def onIntraopClearRegistration(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Back to scanner coordinates failed."), waitCursor=False):
            self.logic.intraopClearRegistration(self.ui.intraopCtSelector.currentNode())
        self.updateIntraopRegistrationLabel()

    def updateIntraopRegistrationLabel(self, *args) -> None:
        """The registration the intra-op CT lies under: shift, rotation, Dice before -> after, verdict."""
        ctNode = self.ui.intraopCtSelector.currentNode()
        try:
            lines = self.logic.intraopRegistrationLines(ctNode)
        except Exception as exc:  # noqa: BLE001 - a non-rigid parent transform: say so in the label
            lines = [str(exc)]
        self.ui.intraopRegistrationLabel.text = "\n".join(lines) if lines else _(
            "Not registered: the intra-op CT is taken in its scanner coordinates.")

    def restoreIntraopPanel(self) -> None:
        """The Intra-op panel as the scene's review was left (SeedImplantPlannerLib.mrml.intraop_state, the reader the
        web page uses too): the intra-op CT chosen (its registration in the label, a missing or unreadable record
        said there), the registration's options, the deviation table and a status line of what was restored."""
        state = None
        with slicer.util.tryWithErrorDisplay(_("Reading the intra-operative review of the scene failed."),
                                             waitCursor=False):
            state = self.logic.intraopRestore()
        if state is None:
            return
        record = getattr(self.logic, "planRecord", None)
        planLine = record.summary() if record is not None else ""
        if state.empty and not state.notes:
            self.ui.intraopStatusLabel.text = planLine
            return
        options = state.options()
        self.ui.intraopBoneMetricCheckBox.checked = options["bone_metric"]
        self.ui.intraopTranslationOnlyCheckBox.checked = options["translation_only"]
        if state.ct_node is not None:
            self.ui.intraopCtSelector.setCurrentNode(state.ct_node)
            if state.registration is not None:
                self.showRegistrationFusion(state.ct_node, self.ui.intraopPlanningCtSelector.currentNode())
        self.updateIntraopRegistrationLabel()
        table = self.logic.intraopNode("NeedleDeviations")
        if table is not None:
            self.ui.intraopDeviationTableView.setMRMLTableNode(table)
        self.ui.intraopStatusLabel.text = "; ".join(t for t in (planLine, state.summary() or "; ".join(state.notes))
                                                      if t)

    def showRegistrationFusion(self, ctNode, planningNode) -> None:
        """The registered intra-op CT over the planning CT in the slice views (foreground at half opacity)."""
        if ctNode is None:
            return
        planningNode = planningNode or (self._parameterNode.ctVolume if self._parameterNode else None)
        slicer.util.setSliceViewerLayers(background=planningNode, foreground=ctNode, foregroundOpacity=0.5)

    def onIntraopFindNeedles(self) -> None:
        ctNode = self.ui.intraopCtSelector.currentNode()
        found = self.runWithProgress(_("Finding the needles"),
                                     lambda progress: self.logic.intraopFindNeedles(ctNode, progress=progress))
        if found is not None:
            nodes, matching = found
            self.ui.intraopStatusLabel.text = _("{0}. Drag the needle ends to correct them.").format(matching.summary_line())

    def onIntraopLoadNeedles(self) -> None:
        path = self.ui.intraopNeedleTablePathLineEdit.currentPath
        with slicer.util.tryWithErrorDisplay(_("Loading the needles in place failed."), waitCursor=True):
            if not path:
                raise ValueError(_("Choose the needle table (needles in place, names as in the plan)."))
            nodes = self.logic.intraopLoadNeedles(path, self.ui.intraopCtSelector.currentNode())
            self.ui.intraopNeedleTablePathLineEdit.addCurrentPathToHistory()
            self.ui.intraopStatusLabel.text = _("{0} needles in place shown; drag their ends to correct them.").format(
                len(nodes))

    def onIntraopFindSeeds(self) -> None:
        ctNode = self.ui.intraopCtSelector.currentNode()
        expected = self.ui.intraopImplantedSpinBox.value or None
        node = self.runWithProgress(_("Finding the implanted seeds"),
                                    lambda progress: self.logic.intraopFindSeeds(ctNode, expected, progress=progress))
        if node is not None:
            self.ui.intraopStatusLabel.text = _("{0} implanted seeds found; drag, add or delete points to correct them.").format(
                node.GetNumberOfControlPoints())

    def onIntraopReplan(self) -> None:
        ctNode = self.ui.intraopCtSelector.currentNode()
        allowNew = self.ui.intraopAllowNewNeedlesCheckBox.checked
        seconds = self.ui.optimizerTimeSpinBox.value
        result = self.runWithProgress(_("Intra-operative re-plan"),
                                      lambda progress: self.logic.intraopReplan(ctNode, allowNew, seconds, progress))
        if result is None:
            return
        self.ui.intraopStatusLabel.text = f"{result.deviation_line()}. {result.advice}."
        self.ui.intraopDeviationTableView.setMRMLTableNode(self.logic.intraopNode("NeedleDeviations"))
        self.updateSeedSummary()
        self.updateNeedleTable()

    def onIntraopShowDvh(self) -> None:
        chart = self.logic.intraopNode("DVHCompareChart")
        if chart is not None:
            slicer.modules.plots.logic().ShowChartInLayout(chart)


#
# SeedImplantPlannerLogic
#


class SeedImplantPlannerLogic(ScriptedLoadableModuleLogic):
    """Thin adapter from the parameter node to SeedImplantPlannerLib (plan_scene.PlanScene)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._planScene = None
        self._intraop = None
        self.planRecord = None  # what the opened scene's plan record gave (SeedImplantPlannerLib.mrml.plan_record)

    def getParameterNode(self):
        return SeedImplantPlannerParameterNode(super().getParameterNode())

    def planScene(self) -> plan_scene.PlanScene:
        """The library's plan object on the application's scene and this module's parameter node."""
        node = self.getParameterNode().parameterNode
        if self._planScene is None or self._planScene.params.node is not node \
                or self._planScene.scene is not slicer.mrmlScene:
            self.stopLiveUpdates()
            self._planScene = plan_scene.PlanScene(SlicerSceneContext.from_running_slicer(), node)
        preset = self.getParameterNode().goalPreset
        if preset != getattr(self._planScene, "goalPresetName", None):
            from SeedImplantPlannerLib.evaluation.goals import load_goals
            self._planScene.set_goals(load_goals(preset) if preset else None)
            self._planScene.goalPresetName = preset
        return self._planScene

    @staticmethod
    def seedModelIds():
        from SeedImplantPlannerLib.physics.sources import load_models
        return sorted(load_models())

    @staticmethod
    def goalPresets():
        from SeedImplantPlannerLib.evaluation.goals import list_presets
        return list_presets()

    def invalidateEvaluation(self) -> None:
        if self._planScene is not None:
            self._planScene._evaluation = None

    def needleTableRows(self):
        from SeedImplantPlannerLib.planning.needles import needle_table
        return needle_table(self.planScene().needles(skip_incomplete=True))

    def needleObstacles(self):
        return self.planScene().needle_obstacles()

    def addNeedleNode(self):
        return self.planScene().add_needle_node()

    def removeNeedleNode(self, node) -> None:
        self.planScene().remove_needle_node(node)

    def planImplant(self, needleMode, direction, timeLimitS=8.0, progress=None):
        params = self.getParameterNode()
        return self.planScene().plan_implant(needleMode, direction or "P", params.needleSpacingMm,
                                             time_limit_s=timeLimitS, progress=progress)

    def loadSeedsUniformly(self, progress=None):
        return self.planScene().load_seeds_uniformly(progress=progress)

    def computeDose(self, progress=None):
        return self.planScene().compute_dose(progress=progress)

    def startLiveUpdates(self) -> None:
        plan = self.planScene()
        if plan.dose_grid is not None:
            plan.start_live_updates(schedule=lambda callback: qt.QTimer.singleShot(0, callback))

    def restartLiveUpdates(self) -> None:
        if self._planScene is not None and self._planScene._observations:
            self.startLiveUpdates()

    def stopLiveUpdates(self) -> None:
        if self._planScene is not None:
            self._planScene.stop_live_updates()

    def writeReport(self, path):
        return self.planScene().write_report(path)

    # -- Intra-op ----------------------------------------------------------------------------------
    def intraopSession(self):
        """The intra-operative review (SeedImplantPlannerLib.mrml.intraop_actions) on the current plan scene."""
        from SeedImplantPlannerLib.mrml.intraop_actions import IntraopSession
        planScene = self.planScene()
        if self._intraop is None or self._intraop.ps is not planScene:
            self._intraop = IntraopSession(planScene)
        return self._intraop

    def intraopRestore(self):
        """The intra-operative review the scene holds (intra-op CT, registration and its record, needles and seeds
        found, deviation table): SeedImplantPlannerLib.mrml.intraop_state.IntraopState."""
        session = self.intraopSession()
        # the plan the scene records (SeedImplantPlannerLib.mrml.plan_record), so re-plan and the Intra-op steps
        # continue; its problem (no record, unreadable, not matching the nodes) is said in the status line
        self.planRecord = session.restore_plan()
        return session.restore()

    def intraopFindNeedles(self, ctNode, progress=None):
        return self.intraopSession().find_needles(ctNode, progress=progress)

    def intraopLoadNeedles(self, path, ctNode=None):
        return self.intraopSession().load_needles(path, ctNode)

    def intraopRegister(self, ctNode, planningNode=None, progress=None, metric="mattes", translation_only=False):
        """Register the intra-op CT to the planning CT (default: the plan's CT); it is put under the result.
        ``metric`` "mattes" (whole CTs) or "bone" (bone window), ``translation_only``: as seedplan register."""
        return self.intraopSession().register(ctNode, planningNode, progress=progress, metric=metric,
                                              translation_only=translation_only)

    def intraopLoadTransform(self, ctNode, path):
        return self.intraopSession().load_transform(ctNode, path)

    def intraopClearRegistration(self, ctNode) -> None:
        self.intraopSession().clear_registration(ctNode)

    def intraopRegistrationLines(self, ctNode):
        """Text lines of the registration ``ctNode`` lies under ([] when none)."""
        if ctNode is None:
            return []
        from SeedImplantPlannerLib.mrml.intraop_registration import panel_report
        result = self.intraopSession().registration(ctNode)
        return [] if result is None else panel_report(result)["lines"]

    def intraopFindSeeds(self, ctNode, expected=None, progress=None):
        return self.intraopSession().find_seeds(ctNode, expected, progress=progress)

    def intraopReplan(self, ctNode, allowNewNeedles=False, timeLimitS=4.0, progress=None):
        self.stopLiveUpdates()
        result = self.intraopSession().replan(ctNode, allowNewNeedles, timeLimitS, progress=progress)
        self.invalidateEvaluation()
        return result

    def intraopNode(self, role):
        """The intra-op table or chart node of ``role`` (NeedleDeviations, ReplanOptions, DVHCompareChart)."""
        from SeedImplantPlannerLib.mrml.nodes import ROLE_ATTRIBUTE
        for cls in ("vtkMRMLTableNode", "vtkMRMLPlotChartNode"):
            for node in slicer.util.getNodesByClass(cls):
                if node.GetAttribute(ROLE_ATTRIBUTE) == role:
                    return node
        return None


#
# SeedImplantPlannerTest
#


class SeedImplantPlannerTest(ScriptedLoadableModuleTest):
    """Smoke test of the module's GUI path on the application's scene."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SeedImplantPlanner_plan_dose_and_live_edit()

    def test_SeedImplantPlanner_plan_dose_and_live_edit(self):
        import numpy as np

        from SeedImplantPlannerLib.core.geometry import ImageGeometry
        from SeedImplantPlannerLib.imaging.segio import Segmentation

        self.delayDisplay("Building a synthetic case")
        g = ImageGeometry((48, 48, 40), (1.5, 1.5, 1.5), (-35.0, -35.0, -29.0))
        c = g.voxel_centers_ras()
        ct = np.where(np.linalg.norm(c, axis=-1) < 32, 40, -1000).astype(np.int16)
        masks = {"PTV": np.linalg.norm(c, axis=-1) <= 12.0,
                 "OAR": np.linalg.norm(c - np.array([22.0, 0.0, 0.0]), axis=-1) <= 5.0}
        logic = SeedImplantPlannerLogic()
        plan = logic.planScene()
        plan.set_ct(ct, g)
        plan.set_segmentation(Segmentation.from_masks(g, masks))
        plan.set_roles("PTV", ["OAR"])
        params = logic.getParameterNode()
        params.prescriptionDoseGy = 120.0
        params.doseEngine = "direct"

        self.delayDisplay("Planning needles and seeds")
        logic.planImplant("template", "S", timeLimitS=1.0)
        self.assertGreater(params.seedsNode.GetNumberOfControlPoints(), 0)
        self.assertIsNotNone(params.doseVolume)
        self.assertEqual(params.doseVolume.GetAttribute("DicomRtImport.DoseVolume"), "1")
        self.assertEqual(len(params.isodoseModels), 5)
        self.assertTrue(all(m.GetAttribute("DicomRtImport.IsodoseModel") == "1" for m in params.isodoseModels))
        self.assertEqual(len(params.slicerRtDvhTables), 2)  # PTV and OAR in SlicerRT's DVH layout
        self.assertTrue(all(t.GetAttribute("DoseVolumeHistogram.DVH") == "1" for t in params.slicerRtDvhTables))

        self.delayDisplay("Moving a seed")
        plan.start_live_updates()  # immediate updates in the test
        seeds = params.seedsNode
        p = seeds.GetNthControlPointPosition(0)
        seeds.SetNthControlPointPosition(0, p[0] + 2.0, p[1], p[2])
        self.assertEqual(plan.last_update["dose_edit"], "moved 1")
        plan.stop_live_updates()
        self.delayDisplay("Test passed")
