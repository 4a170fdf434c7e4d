; Kvant's Windows installer (Inno Setup 6). packaging/build.py compiles it after PyInstaller:
;   iscc /DAppVersion=0.1.0 /DAppVersionNumeric=0.1.0.0 /DBundleDir=dist\Kvant /DOutputDir=dist packaging\windows\kvant.iss
; Installs per user by default (no administrator rights; the setup offers all users too), adds a Start
; menu entry (and optionally a desktop one), makes .gguf files open with Kvant, and registers an
; uninstaller (Settings > Apps). Kvant's models and settings in %LOCALAPPDATA%\Kvant are kept on
; uninstall.

#ifndef AppVersion
  #define AppVersion "0.1.0"
#endif
#ifndef AppVersionNumeric
  #define AppVersionNumeric "0.1.0.0"
#endif
#ifndef BundleDir
  #define BundleDir "..\..\dist\Kvant"
#endif
#ifndef OutputDir
  #define OutputDir "..\..\dist"
#endif

[Setup]
AppId={{5B8C3E0F-7A41-4C1E-9D5A-6F2B1C8E4A37}
AppName=Kvant
AppVersion={#AppVersion}
AppVerName=Kvant {#AppVersion}
AppPublisher=Kvant
AppComments=A model manager for quantized large language models
VersionInfoVersion={#AppVersionNumeric}
VersionInfoProductName=Kvant
VersionInfoDescription=Kvant setup
DefaultDirName={autopf}\Kvant
DefaultGroupName=Kvant
DisableProgramGroupPage=yes
PrivilegesRequired=lowest
PrivilegesRequiredOverridesAllowed=dialog
ArchitecturesAllowed=x64compatible
ArchitecturesInstallIn64BitMode=x64compatible
MinVersion=10.0
OutputDir={#OutputDir}
OutputBaseFilename=Kvant-{#AppVersion}-windows-x64-setup
SetupIconFile=..\..\resources\icons\kvant.ico
UninstallDisplayIcon={app}\Kvant.exe
UninstallDisplayName=Kvant {#AppVersion}
Compression=lzma2
SolidCompression=yes
WizardStyle=modern
ChangesAssociations=yes
CloseApplications=yes

[Languages]
Name: "english"; MessagesFile: "compiler:Default.isl"

[Tasks]
Name: "desktopicon"; Description: "{cm:CreateDesktopIcon}"; GroupDescription: "{cm:AdditionalIcons}"; Flags: unchecked
Name: "assocgguf"; Description: "Open .gguf model files with Kvant"; GroupDescription: "File types:"

[Files]
Source: "{#BundleDir}\*"; DestDir: "{app}"; Flags: ignoreversion recursesubdirs createallsubdirs

[Icons]
Name: "{autoprograms}\Kvant"; Filename: "{app}\Kvant.exe"; Comment: "Quantized LLMs: fit, download, convert, chat"
Name: "{autodesktop}\Kvant"; Filename: "{app}\Kvant.exe"; Tasks: desktopicon

[Registry]
; .gguf -> Kvant.gguf (HKA: HKCU for a per-user install, HKLM for all users)
Root: HKA; Subkey: "Software\Classes\.gguf\OpenWithProgids"; ValueType: string; ValueName: "Kvant.gguf"; ValueData: ""; Flags: uninsdeletevalue; Tasks: assocgguf
Root: HKA; Subkey: "Software\Classes\Kvant.gguf"; ValueType: string; ValueName: ""; ValueData: "GGUF model"; Flags: uninsdeletekey; Tasks: assocgguf
Root: HKA; Subkey: "Software\Classes\Kvant.gguf\DefaultIcon"; ValueType: string; ValueName: ""; ValueData: "{app}\Kvant.exe,0"; Tasks: assocgguf
Root: HKA; Subkey: "Software\Classes\Kvant.gguf\shell\open\command"; ValueType: string; ValueName: ""; ValueData: """{app}\Kvant.exe"" ""%1"""; Tasks: assocgguf
Root: HKA; Subkey: "Software\Classes\Applications\Kvant.exe\SupportedTypes"; ValueType: string; ValueName: ".gguf"; ValueData: ""; Flags: uninsdeletekey; Tasks: assocgguf

[Run]
Filename: "{app}\Kvant.exe"; Description: "{cm:LaunchProgram,Kvant}"; Flags: nowait postinstall skipifsilent

[UninstallDelete]
; byte-code caches Python may have written next to the engine's sources since the install
Type: filesandordirs; Name: "{app}\_internal"
