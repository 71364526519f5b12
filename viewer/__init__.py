"""The radreview workstation: Qt + VTK application (``_qt``), VTK scenes (``render``) and the
GUI-free viewer model (``model``) that both subscribe to."""
