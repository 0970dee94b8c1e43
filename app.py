"""Launch the unlearnviz dashboard: ``python app.py [--model M] [--data D] [--port 7860]``."""

from unlearnviz.ui.launch import main

if __name__ == "__main__":
    main()
