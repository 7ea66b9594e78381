// Lint rules: typescript-eslint's recommended set, plus the house rule that core never prints.
import js from '@eslint/js'
import globals from 'globals'
import tseslint from 'typescript-eslint'

export default tseslint.config(
  { ignores: ['dist/', 'node_modules/', 'coverage/'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    languageOptions: { globals: globals.node },
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      '@typescript-eslint/no-non-null-assertion': 'off',
      'no-control-regex': 'off',
    },
  },
  {
    // DESIGN.md: core returns values and throws typed errors; it never prints, prompts or exits.
    files: ['src/core/**/*.ts'],
    rules: {
      'no-console': 'error',
      'no-restricted-properties': [
        'error',
        { object: 'process', property: 'exit', message: 'core never exits: throw a typed error.' },
        { object: 'process', property: 'stdout', message: 'core never prints: return a value.' },
        { object: 'process', property: 'stderr', message: 'core never prints: return a value.' },
      ],
      'no-restricted-imports': [
        'error',
        {
          patterns: [
            {
              group: ['**/commands/**', '**/ui/**'],
              message: 'arrows point one way: core never imports commands or ui.',
            },
          ],
        },
      ],
    },
  },
)
