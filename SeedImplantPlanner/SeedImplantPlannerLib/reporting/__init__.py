"""Charts and the HTML/PDF report; imports core to planning."""
