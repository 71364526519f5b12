"""Qt widgets of the workstation (thin: all logic lives in viewer.model, studies, review...)."""
